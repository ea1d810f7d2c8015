//! Crate-internal macros.

/// Defines a wire enum: known variants with their wire spelling plus `Other(String)`.
///
/// Parsing never fails and matches case-insensitively, ignoring spaces, `-` and `_`
/// (`"salesqualified"`, `"Sales Qualified"` → `SalesQualified`). An unknown value is kept
/// verbatim in `Other` and serializes back unchanged, so the tolerant reader never loses data.
/// A JSON number (an enum sent as its ordinal) is kept as `Other("3")`.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $wire:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
            /// A value this version does not know, kept verbatim so it round-trips.
            Other(String),
        }

        impl $name {
            /// Every known variant.
            pub const KNOWN: &'static [$name] = &[$($name::$variant),+];

            /// The wire spelling.
            pub fn as_str(&self) -> &str {
                match self {
                    $( Self::$variant => $wire, )+
                    Self::Other(other) => other.as_str(),
                }
            }

            /// Parse leniently; unknown text becomes `Other` (trimmed).
            pub fn parse(text: &str) -> Self {
                let key = $crate::macros::wire_key(text);
                $( if key == $crate::macros::wire_key($wire) { return Self::$variant; } )+
                Self::Other(text.trim().to_owned())
            }

            /// Whether this is a documented value (not `Other`).
            pub fn is_known(&self) -> bool {
                !matches!(self, Self::Other(_))
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> Self {
                Self::parse(text)
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = ::std::convert::Infallible;
            fn from_str(text: &str) -> Result<Self, Self::Err> {
                Ok(Self::parse(text))
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                use ::serde::de::Error as _;
                match <::serde_json::Value as ::serde::Deserialize>::deserialize(deserializer)? {
                    ::serde_json::Value::String(text) => Ok(Self::parse(&text)),
                    ::serde_json::Value::Number(n) => Ok(Self::Other(n.to_string())),
                    other => Err(D::Error::custom(format!(
                        concat!("expected a ", stringify!($name), " string, found {}"),
                        other
                    ))),
                }
            }
        }
    };
}

pub(crate) use wire_enum;

/// The comparison key of a wire enum value: lower case, letters and digits only.
pub(crate) fn wire_key(text: &str) -> String {
    text.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}
