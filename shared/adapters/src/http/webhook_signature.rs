//! Partner Center webhook authentication (docs/partner-center.md#webhook-signature), verify before
//! parse, as a typestate:
//!
//! ```text
//! UnverifiedWebhook { headers, body: Bytes }  ──verify(&WebhookVerifier).await──▶  VerifiedWebhook
//!                                                                                   └─ event() / body(): the only way to read the body
//! ```
//!
//! [`UnverifiedWebhook`] offers no access to its body; only a [`VerifiedWebhook`] does, and only
//! [`UnverifiedWebhook::verify`] makes one. The checks, in order:
//!
//! 1. The headers are present: the signature (`Authorization: Signature <base64>`, or
//!    `x-ms-signature` with the same value — split on the first space; a bare base64 value is
//!    tolerated there — when the registration set `SignatureTokenToMsSignatureHeader`; when
//!    both are present `x-ms-signature` is used), `X-MS-Certificate-Url` and
//!    `X-MS-Signature-Algorithm`. Missing → [`BadRequest`] (400).
//! 2. The algorithm is `rsa-sha256` (any case); the signature decodes as base64.
//! 3. The certificate URL passes the policy **before anything is downloaded**: `https` only,
//!    port 443, host on the allow-list (default [`DEFAULT_CERTIFICATE_HOST`], the documented
//!    Microsoft storage host), no user info. Plain `http` and other hosts only for hosts
//!    explicitly configured with `WebhookVerifier::with_insecure_hosts`, which exists only
//!    with the cargo feature `sandbox` (tests and the local demo against the sandbox's
//!    `127.0.0.1:<port>`). **A production build must never enable that feature**; without it
//!    the only relaxation is naming other https hosts in
//!    [`WebhookVerifierConfig::allowed_hosts`] (should Microsoft move the certificate), and
//!    nothing anywhere can switch verification off: chain, organisation and signature are
//!    always checked.
//! 4. The certificate is downloaded without following redirects, with a timeout and a size cap
//!    ([`DEFAULT_MAX_CERTIFICATE_BYTES`]); DER or PEM. Only a certificate that passes steps 5–6
//!    is cached, per URL, for the life of the instance. Its chain and subject are checked again
//!    on a use at least [`CHAIN_RECHECK_INTERVAL`] after they last passed, and never trusted
//!    past its `notAfter`, so expiry is noticed; every request's signature is verified (step
//!    7). When a cached certificate fails steps 5–7 it is downloaded again,
//!    at most once per URL per [`DEFAULT_CERTIFICATE_REFRESH_INTERVAL`], so a certificate
//!    rotated at the same URL is picked up while forged requests cannot trigger a download
//!    each. A network failure, a timeout or a 5xx / 429 of the download → [`Unavailable`]
//!    (503, so Partner Center delivers the event again); any other answer (404, 3xx, oversize)
//!    → 401.
//!
//!    Unauthenticated requests choose the URL, so downloads are bounded (all → 401 before any
//!    download, with the reason):
//!    - **negative cache**: a URL whose download or certificate failed (404, not a
//!      certificate, wrong chain or subject) is refused without a download for
//!      [`DEFAULT_FAILED_URL_TTL`]; at most [`DEFAULT_MAX_FAILED_URLS`] URLs are remembered
//!      (the oldest are forgotten first);
//!    - **download budget**: a token bucket of [`DEFAULT_DOWNLOAD_BURST`] downloads, one more
//!      every [`DEFAULT_DOWNLOAD_REFILL`], shared by every URL not cached; over it a request is
//!      refused without a download until the bucket refills. The real certificate, once
//!      cached, needs no download, so a flood of made-up paths cannot stop genuine events.
//!
//!    The clock of both is injectable ([`VerifierClock`]) so tests need no sleeps.
//! 5. The chain is verified with rustls-webpki against the configured trust anchors and
//!    intermediates at the current time. Extended key usage: the real leaf's EKU is UNKNOWN,
//!    so a leaf (and intermediates) without EKU, or with serverAuth, clientAuth or
//!    anyExtendedKeyUsage, is accepted; any other EKU set (e.g. code signing only) is not.
//!    Revocation is **not** checked (no CRL/OCSP fetch from a Lambda).
//! 6. The certificate's subject has `O=Microsoft Corporation` **and** names the signing
//!    certificate: its subject CN (or a DNS subjectAltName) is one of
//!    [`WebhookVerifierConfig::allowed_subject_names`], by default
//!    [`DEFAULT_SIGNING_SUBJECT_NAME`]. Microsoft's documentation names the certificate file
//!    (`pcnotifications-dispatch.microsoft.com.cer`) but not its subject; we read the file name
//!    as the subject CN, and keep the list configurable (`WEBHOOK_CERT_SUBJECTS`) should the
//!    real certificate say otherwise. Without this check any certificate Microsoft's CAs
//!    issued to any Microsoft service (all `O=Microsoft Corporation`) would be accepted.
//! 7. The signature is RSASSA-PKCS1-v1_5 with SHA-256 over the raw body bytes, by the
//!    certificate's key (2048–8192-bit RSA).
//!
//! Everything wrong in steps 2–7 → [`Unauthorized`] (401).
//!
//! # Trust anchors
//!
//! Microsoft does not document the signing certificate's chain, and it cannot be fetched
//! here, so anchors and intermediates are **required configuration** (PEM bundles, never
//! built in). Configure the Microsoft roots that Microsoft's TLS and signing certificates
//! chain to — "Microsoft RSA Root Certificate Authority 2017" and "DigiCert Global Root G2"
//! (the root of the current "Microsoft Azure RSA TLS Issuing CA 03/04/07/08" intermediates) —
//! plus those intermediates (also obtainable from the downloaded `.cer`'s Authority
//! Information Access URL, e.g. with `openssl x509 -in pcnotifications-dispatch.microsoft.com.cer
//! -inform der -text`). Re-check the real certificate's issuer with the CLI's `doctor` before
//! a rollout; an event whose chain is not covered fails with 401 and Partner Center retries it
//! (10 attempts).
//!
//! [`BadRequest`]: WebhookAuthErrorKind::BadRequest
//! [`Unauthorized`]: WebhookAuthErrorKind::Unauthorized
//! [`Unavailable`]: WebhookAuthErrorKind::Unavailable

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::{Bytes, BytesMut};
use cosell_domain::webhook::WebhookEvent;
use reqwest::header::HeaderMap;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use url::Url;
use webpki::{EndEntityCert, ExtendedKeyUsageValidator, KeyPurposeId, KeyPurposeIdIter};

use super::response::{
    HttpAdapterError, error_chain, redacted_url, redacted_url_text, reqwest_error_text,
};

/// The documented host of Partner Center's signing certificate
/// (`https://3psostorageacct.blob.core.windows.net/cert/pcnotifications-dispatch.microsoft.com.cer`).
pub const DEFAULT_CERTIFICATE_HOST: &str = "3psostorageacct.blob.core.windows.net";
/// The largest certificate downloaded (a real one is about 2 KiB).
pub const DEFAULT_MAX_CERTIFICATE_BYTES: usize = 16 * 1024;
/// The longest a certificate download may take.
pub const DEFAULT_DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(5);
/// The organisation the signing certificate's subject must name.
pub const REQUIRED_ORGANIZATION: &str = "Microsoft Corporation";
/// The only accepted `X-MS-Signature-Algorithm`.
pub const SIGNATURE_ALGORITHM: &str = "rsa-sha256";
/// `X-MS-Certificate-Url`.
pub const CERTIFICATE_URL_HEADER: &str = "x-ms-certificate-url";
/// `X-MS-Signature-Algorithm`.
pub const SIGNATURE_ALGORITHM_HEADER: &str = "x-ms-signature-algorithm";
/// `x-ms-signature` (used instead of `Authorization` with `SignatureTokenToMsSignatureHeader`).
pub const MS_SIGNATURE_HEADER: &str = "x-ms-signature";
/// Certificates kept per instance (distinct URLs; more are verified but not cached).
const MAX_CACHED_CERTIFICATES: usize = 16;
/// The UTF-8 byte-order mark some senders put before a JSON body.
const UTF8_BOM: &[u8] = "\u{feff}".as_bytes();
/// How long a cached certificate whose chain and subject passed (steps 5–6) is trusted without
/// checking them again, never past its own `notAfter`; the signature of every request is still
/// verified against it (step 7). Checking the chain is the costliest part of a request (two
/// RSA verifications and an X.509 parse), and it gives the same answer until the certificate
/// or an intermediate expires.
pub const CHAIN_RECHECK_INTERVAL: Duration = Duration::from_secs(300);
/// The shortest time between two downloads of one URL's certificate after a failed check.
pub const DEFAULT_CERTIFICATE_REFRESH_INTERVAL: Duration = Duration::from_secs(300);
/// The subject name of Partner Center's signing certificate (the documented file name,
/// `pcnotifications-dispatch.microsoft.com.cer`, read as its CN; see the module docs).
pub const DEFAULT_SIGNING_SUBJECT_NAME: &str = "pcnotifications-dispatch.microsoft.com";
/// How long a URL whose certificate could not be used is refused without a download.
pub const DEFAULT_FAILED_URL_TTL: Duration = Duration::from_secs(600);
/// How many failed URLs are remembered.
pub const DEFAULT_MAX_FAILED_URLS: usize = 256;
/// Certificate downloads allowed at once (the token bucket's size).
pub const DEFAULT_DOWNLOAD_BURST: u32 = 4;
/// One more download is allowed after this long (the token bucket's refill).
pub const DEFAULT_DOWNLOAD_REFILL: Duration = Duration::from_secs(60);

/// EKU OIDs (DER contents): serverAuth 1.3.6.1.5.5.7.3.1, clientAuth 1.3.6.1.5.5.7.3.2,
/// anyExtendedKeyUsage 2.5.29.37.0.
const EKU_SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
const EKU_CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];
const EKU_ANY: &[u8] = &[0x55, 0x1d, 0x25, 0x00];

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// How the webhook function must answer a failed verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WebhookAuthErrorKind {
    /// A required header is missing: 400.
    BadRequest,
    /// Anything else wrong with the signature or certificate: 401.
    Unauthorized,
    /// The certificate could not be downloaded (network, timeout, 5xx): 503, so Partner
    /// Center delivers the event again.
    Unavailable,
}

impl WebhookAuthErrorKind {
    /// The HTTP status to answer with.
    pub fn status_code(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Unauthorized => 401,
            Self::Unavailable => 503,
        }
    }
}

/// Why a webhook was not accepted. The reason is for the log; answer the sender with
/// [`status_code`](Self::status_code) and a generic body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Partner Center webhook not authenticated ({}): {reason}", kind.status_code())]
pub struct WebhookAuthError {
    kind: WebhookAuthErrorKind,
    reason: String,
}

impl WebhookAuthError {
    fn bad_request(reason: impl Into<String>) -> Self {
        Self {
            kind: WebhookAuthErrorKind::BadRequest,
            reason: reason.into(),
        }
    }

    fn unauthorized(reason: impl Into<String>) -> Self {
        Self {
            kind: WebhookAuthErrorKind::Unauthorized,
            reason: reason.into(),
        }
    }

    fn unavailable(reason: impl Into<String>) -> Self {
        Self {
            kind: WebhookAuthErrorKind::Unavailable,
            reason: reason.into(),
        }
    }

    /// The kind.
    pub fn kind(&self) -> WebhookAuthErrorKind {
        self.kind
    }

    /// The HTTP status to answer with (400, 401 or 503).
    pub fn status_code(&self) -> u16 {
        self.kind.status_code()
    }

    /// What was wrong (for the log).
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration and the verifier
// ---------------------------------------------------------------------------------------------

/// Settings of a [`WebhookVerifier`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookVerifierConfig {
    /// PEM bundle of the trust anchors (at least one certificate; see the
    /// [module docs](self#trust-anchors) for which Microsoft roots).
    pub trust_anchors_pem: String,
    /// PEM bundle of the intermediate CA certificates (may be empty when the anchors issue the
    /// leaf directly).
    pub intermediates_pem: String,
    /// The https hosts a certificate URL may name (exact, case-insensitive, port 443).
    /// Default: [`DEFAULT_CERTIFICATE_HOST`].
    pub allowed_hosts: Vec<String>,
    /// Certificate download timeout.
    pub download_timeout: Duration,
    /// Certificate size cap in bytes.
    pub max_certificate_bytes: usize,
    /// After a failed check, a cached certificate is downloaded again only when it is at least
    /// this old (default [`DEFAULT_CERTIFICATE_REFRESH_INTERVAL`]).
    pub refresh_interval: Duration,
    /// The names the signing certificate's subject CN (or a DNS subjectAltName) may be, exact
    /// and case-insensitive. Default: [`DEFAULT_SIGNING_SUBJECT_NAME`].
    pub allowed_subject_names: Vec<String>,
    /// How long a URL whose certificate failed is refused without a download
    /// (default [`DEFAULT_FAILED_URL_TTL`]).
    pub failed_url_ttl: Duration,
    /// How many failed URLs are remembered (default [`DEFAULT_MAX_FAILED_URLS`]).
    pub max_failed_urls: usize,
    /// Downloads allowed at once (default [`DEFAULT_DOWNLOAD_BURST`]).
    pub download_burst: u32,
    /// One more download is allowed after this long (default [`DEFAULT_DOWNLOAD_REFILL`]).
    pub download_refill: Duration,
    /// The monotonic clock of the caches and the download budget.
    pub clock: VerifierClock,
}

/// A monotonic clock: [`VerifierClock::system`], or any function (tests advance their own).
#[derive(Clone)]
pub struct VerifierClock(Arc<dyn Fn() -> Instant + Send + Sync>);

impl VerifierClock {
    /// [`Instant::now`].
    pub fn system() -> Self {
        Self(Arc::new(Instant::now))
    }

    /// A clock reading `now`.
    pub fn from_fn(now: impl Fn() -> Instant + Send + Sync + 'static) -> Self {
        Self(Arc::new(now))
    }

    fn now(&self) -> Instant {
        (self.0)()
    }
}

impl Default for VerifierClock {
    fn default() -> Self {
        Self::system()
    }
}

impl fmt::Debug for VerifierClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VerifierClock")
    }
}

impl PartialEq for VerifierClock {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for VerifierClock {}

impl WebhookVerifierConfig {
    /// The defaults with the given PEM bundles.
    pub fn new(trust_anchors_pem: impl Into<String>, intermediates_pem: impl Into<String>) -> Self {
        Self {
            trust_anchors_pem: trust_anchors_pem.into(),
            intermediates_pem: intermediates_pem.into(),
            allowed_hosts: vec![DEFAULT_CERTIFICATE_HOST.to_owned()],
            download_timeout: DEFAULT_DOWNLOAD_TIMEOUT,
            max_certificate_bytes: DEFAULT_MAX_CERTIFICATE_BYTES,
            refresh_interval: DEFAULT_CERTIFICATE_REFRESH_INTERVAL,
            allowed_subject_names: vec![DEFAULT_SIGNING_SUBJECT_NAME.to_owned()],
            failed_url_ttl: DEFAULT_FAILED_URL_TTL,
            max_failed_urls: DEFAULT_MAX_FAILED_URLS,
            download_burst: DEFAULT_DOWNLOAD_BURST,
            download_refill: DEFAULT_DOWNLOAD_REFILL,
            clock: VerifierClock::system(),
        }
    }
}

/// The certificate URL policy.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UrlPolicy {
    /// https hosts, lowercase, port 443.
    https_hosts: Vec<String>,
    /// `(host, port)` pairs allowed over http or https (sandbox feature only).
    insecure: Vec<(String, u16)>,
}

impl UrlPolicy {
    fn check(&self, raw: &str) -> Result<Url, WebhookAuthError> {
        let url = Url::parse(raw.trim()).map_err(|error| {
            WebhookAuthError::unauthorized(format!(
                "the certificate URL '{}' is not a URL: {error}",
                redacted_url_text(raw)
            ))
        })?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(WebhookAuthError::unauthorized(
                "the certificate URL carries user info",
            ));
        }
        // Certificates are cached per URL: a query or fragment would let unauthenticated
        // requests mint endless cache keys (and downloads) for the same certificate.
        if url.query().is_some() || url.fragment().is_some() {
            return Err(WebhookAuthError::unauthorized(
                "the certificate URL carries a query or fragment",
            ));
        }
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let port = url.port_or_known_default();
        let insecure = port.is_some_and(|port| {
            self.insecure
                .iter()
                .any(|(allowed, allowed_port)| *allowed == host && *allowed_port == port)
        });
        let allowed = match url.scheme() {
            "https" => insecure || (port == Some(443) && self.https_hosts.contains(&host)),
            "http" => insecure,
            _ => false,
        };
        if !allowed {
            return Err(WebhookAuthError::unauthorized(format!(
                "the certificate URL '{}' is not on an allowed host (https only: {})",
                redacted_url(&url),
                self.https_hosts.join(", ")
            )));
        }
        Ok(url)
    }
}

/// Verifies Partner Center webhooks. Build once per cold start and share (cheap to clone);
/// it holds the trust anchors, the download client and the certificate cache.
#[derive(Clone)]
pub struct WebhookVerifier {
    inner: Arc<VerifierInner>,
}

struct VerifierInner {
    http: reqwest::Client,
    anchors: Vec<TrustAnchor<'static>>,
    intermediates: Vec<CertificateDer<'static>>,
    policy: UrlPolicy,
    max_certificate_bytes: usize,
    refresh_interval: Duration,
    cache: Mutex<HashMap<String, Cached>>,
    /// How many times a certificate's chain and subject were checked (steps 5–6).
    chain_checks: std::sync::atomic::AtomicU64,
    subject_names: Vec<String>,
    failed: Mutex<FailedUrls>,
    downloads: Mutex<DownloadBudget>,
    /// Held while a certificate is downloaded: concurrent first deliveries (Partner Center
    /// sends several at once) wait for one download instead of each spending the budget.
    downloading: tokio::sync::Mutex<()>,
    clock: VerifierClock,
}

/// The negative cache: URLs whose certificate could not be used, until when they are refused
/// and why. Bounded: when full, expired entries go first, then the oldest.
struct FailedUrls {
    until: HashMap<String, (Instant, String)>,
    ttl: Duration,
    capacity: usize,
}

impl FailedUrls {
    fn refused(&self, url: &str, now: Instant) -> Option<&str> {
        self.until
            .get(url)
            .filter(|(until, _)| now < *until)
            .map(|(_, reason)| reason.as_str())
    }

    fn remember(&mut self, url: &str, reason: &str, now: Instant) {
        if self.capacity == 0 || self.ttl.is_zero() {
            return;
        }
        if self.until.len() >= self.capacity && !self.until.contains_key(url) {
            self.until.retain(|_, (until, _)| now < *until);
        }
        while self.until.len() >= self.capacity && !self.until.contains_key(url) {
            let oldest = self
                .until
                .iter()
                .min_by_key(|(_, (until, _))| *until)
                .map(|(key, _)| key.clone());
            match oldest {
                Some(key) => self.until.remove(&key),
                None => break,
            };
        }
        self.until
            .insert(url.to_owned(), (now + self.ttl, reason.to_owned()));
    }

    fn len(&self) -> usize {
        self.until.len()
    }
}

/// The token bucket bounding certificate downloads.
struct DownloadBudget {
    available: u32,
    burst: u32,
    refill: Duration,
    /// When the bucket was last topped up.
    since: Instant,
}

impl DownloadBudget {
    /// Take one download; `Err(wait)` when none is left (`wait`: until the next one).
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        if self.refill.is_zero() {
            return Ok(());
        }
        let elapsed = now.saturating_duration_since(self.since);
        let earned = elapsed.as_nanos() / self.refill.as_nanos();
        if earned > 0 {
            let earned = u32::try_from(earned).unwrap_or(u32::MAX);
            self.available = self.available.saturating_add(earned).min(self.burst);
            self.since = if self.available == self.burst {
                now
            } else {
                self.since + self.refill * earned
            };
        }
        if self.available == 0 {
            return Err(self
                .refill
                .saturating_sub(now.saturating_duration_since(self.since)));
        }
        if self.available == self.burst {
            self.since = now;
        }
        self.available -= 1;
        Ok(())
    }
}

/// A downloaded certificate, when it was downloaded, and until when its chain and subject are
/// trusted without a check ([`CHAIN_RECHECK_INTERVAL`]).
struct Cached {
    der: Arc<CertificateDer<'static>>,
    fetched: Instant,
    trusted_until: Instant,
}

/// A certificate to check a request against.
struct Certificate {
    der: Arc<CertificateDer<'static>>,
    /// When it was downloaded, if cached.
    fetched: Option<Instant>,
    /// Its chain and subject passed recently: only the signature is verified.
    trusted: bool,
}

impl fmt::Debug for WebhookVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookVerifier")
            .field("trust_anchors", &self.inner.anchors.len())
            .field("intermediates", &self.inner.intermediates.len())
            .field("policy", &self.inner.policy)
            .field("max_certificate_bytes", &self.inner.max_certificate_bytes)
            .finish()
    }
}

fn certificates(what: &str, pem: &str) -> Result<Vec<CertificateDer<'static>>, HttpAdapterError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| HttpAdapterError::Config(format!("the {what} PEM bundle: {error}")))
}

impl WebhookVerifier {
    /// A verifier with the production URL policy (https, allow-listed hosts only).
    pub fn new(config: WebhookVerifierConfig) -> Result<Self, HttpAdapterError> {
        Self::build(config, Vec::new())
    }

    /// A verifier that also accepts certificate URLs on `hosts` (`host:port`, e.g. the
    /// sandbox's `127.0.0.1:41234`) over plain http. **Tests and the local demo only**: this
    /// exists only with the cargo feature `sandbox`, which a production build never enables.
    #[cfg(feature = "sandbox")]
    pub fn with_insecure_hosts<I, S>(
        config: WebhookVerifierConfig,
        hosts: I,
    ) -> Result<Self, HttpAdapterError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut insecure = Vec::new();
        for entry in hosts {
            let entry = entry.as_ref().trim();
            let url = Url::parse(&format!("http://{entry}")).map_err(|error| {
                HttpAdapterError::Config(format!("insecure host '{entry}': {error}"))
            })?;
            let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
                return Err(HttpAdapterError::Config(format!(
                    "insecure host '{entry}' must be host:port"
                )));
            };
            insecure.push((host.to_ascii_lowercase(), port));
        }
        tracing::warn!(
            hosts = ?insecure,
            "webhook certificate URLs are accepted over plain http for these hosts (sandbox build)"
        );
        Self::build(config, insecure)
    }

    fn build(
        config: WebhookVerifierConfig,
        insecure: Vec<(String, u16)>,
    ) -> Result<Self, HttpAdapterError> {
        let anchor_certs = certificates("trust anchor", &config.trust_anchors_pem)?;
        if anchor_certs.is_empty() {
            return Err(HttpAdapterError::Config(
                "no trust anchor configured: the webhook verifier needs the PEM of the Microsoft \
                 root certificates the signing certificate chains to"
                    .into(),
            ));
        }
        let anchors = anchor_certs
            .iter()
            .map(|der| {
                webpki::anchor_from_trusted_cert(der)
                    .map(|anchor| anchor.to_owned())
                    .map_err(|error| {
                        HttpAdapterError::Config(format!("a trust anchor is not usable: {error}"))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let intermediates = certificates("intermediate", &config.intermediates_pem)?;
        let https_hosts: Vec<String> = config
            .allowed_hosts
            .iter()
            .map(|host| host.trim().to_ascii_lowercase())
            .filter(|host| !host.is_empty())
            .collect();
        if let Some(bad) = https_hosts
            .iter()
            .find(|host| host.contains(['/', ':', '@', '?', '#']))
        {
            return Err(HttpAdapterError::Config(format!(
                "allowed certificate host '{bad}' must be a bare host name"
            )));
        }
        let subject_names: Vec<String> = config
            .allowed_subject_names
            .iter()
            .map(|name| name.trim().to_ascii_lowercase())
            .filter(|name| !name.is_empty())
            .collect();
        if subject_names.is_empty() {
            return Err(HttpAdapterError::Config(format!(
                "no allowed subject name for the webhook signing certificate: set \
                 WEBHOOK_CERT_SUBJECTS (default {DEFAULT_SIGNING_SUBJECT_NAME})"
            )));
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.download_timeout)
            .connect_timeout(config.download_timeout)
            .https_only(insecure.is_empty())
            .build()
            .map_err(|error| {
                HttpAdapterError::Config(format!(
                    "the certificate download client could not be built: {}",
                    error_chain(&error)
                ))
            })?;
        Ok(Self {
            inner: Arc::new(VerifierInner {
                http,
                anchors,
                intermediates,
                policy: UrlPolicy {
                    https_hosts,
                    insecure,
                },
                max_certificate_bytes: config.max_certificate_bytes,
                refresh_interval: config.refresh_interval,
                cache: Mutex::new(HashMap::new()),
                chain_checks: std::sync::atomic::AtomicU64::new(0),
                subject_names,
                failed: Mutex::new(FailedUrls {
                    until: HashMap::new(),
                    ttl: config.failed_url_ttl,
                    capacity: config.max_failed_urls,
                }),
                downloads: Mutex::new(DownloadBudget {
                    available: config.download_burst,
                    burst: config.download_burst,
                    refill: config.download_refill,
                    since: config.clock.now(),
                }),
                downloading: tokio::sync::Mutex::new(()),
                clock: config.clock,
            }),
        })
    }

    /// How many times a certificate's chain and subject were checked (steps 5–6): once per
    /// download, then once per [`CHAIN_RECHECK_INTERVAL`] of use.
    pub fn chain_checks(&self) -> u64 {
        self.inner
            .chain_checks
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many certificates are cached.
    pub fn cached_certificates(&self) -> usize {
        self.inner
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// How many failed certificate URLs are remembered (refused without a download).
    pub fn failed_certificate_urls(&self) -> usize {
        self.inner
            .failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The certificate at `url` (already policy-checked): cached (with its download instant),
    /// or downloaded and checked (`None`). A URL that failed recently, or a download over the
    /// budget, is refused without a download.
    async fn certificate(&self, url: &Url) -> Result<Certificate, WebhookAuthError> {
        if let Some(cached) = self.cached(url) {
            return Ok(cached);
        }
        self.refuse_if_failed(url)?;
        let _one_at_a_time = self.inner.downloading.lock().await;
        // Downloaded, or found unusable, while this request waited?
        if let Some(cached) = self.cached(url) {
            return Ok(cached);
        }
        self.refuse_if_failed(url)?;
        Ok(Certificate {
            der: self.fetch(url).await?,
            fetched: None,
            trusted: true,
        })
    }

    /// The certificate at `url` again, after `stale` (cached) failed a check: the one another
    /// request downloaded meanwhile, else a new download.
    async fn refresh(
        &self,
        url: &Url,
        stale: &Arc<CertificateDer<'static>>,
    ) -> Result<Arc<CertificateDer<'static>>, WebhookAuthError> {
        let _one_at_a_time = self.inner.downloading.lock().await;
        match self.cached(url) {
            Some(cached) if cached.der != *stale => Ok(cached.der),
            _ => self.fetch(url).await,
        }
    }

    /// The cached certificate of `url`, when it was downloaded, and whether it is trusted.
    fn cached(&self, url: &Url) -> Option<Certificate> {
        let now = self.inner.clock.now();
        self.inner
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(url.as_str())
            .map(|cached| Certificate {
                der: Arc::clone(&cached.der),
                fetched: Some(cached.fetched),
                trusted: now < cached.trusted_until,
            })
    }

    /// Until when a certificate whose chain and subject just passed is trusted: at most
    /// [`CHAIN_RECHECK_INTERVAL`], never past its `notAfter` (unix seconds).
    fn trusted_until(&self, not_after: i64) -> Instant {
        let now = self.inner.clock.now();
        let left =
            not_after.saturating_sub(UnixTime::now().as_secs().try_into().unwrap_or(i64::MAX));
        let left = Duration::from_secs(u64::try_from(left).unwrap_or(0));
        now + left.min(CHAIN_RECHECK_INTERVAL)
    }

    /// Trust the cached certificate of `url` again, its chain and subject having just passed
    /// (nothing when another one replaced it meanwhile).
    fn trust(&self, url: &Url, der: &Arc<CertificateDer<'static>>, not_after: i64) {
        let until = self.trusted_until(not_after);
        let mut cache = self
            .inner
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(cached) = cache.get_mut(url.as_str())
            && cached.der == *der
        {
            cached.trusted_until = until;
        }
    }

    /// 401 without a download when `url` failed recently (the negative cache).
    fn refuse_if_failed(&self, url: &Url) -> Result<(), WebhookAuthError> {
        let now = self.inner.clock.now();
        let refused = {
            let failed = self
                .inner
                .failed
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            failed
                .refused(url.as_str(), now)
                .map(|reason| (reason.to_owned(), failed.ttl))
        };
        match refused {
            Some((reason, ttl)) => Err(WebhookAuthError::unauthorized(format!(
                "the certificate URL {} failed recently and is not downloaded again for {} s \
                 (it failed: {reason})",
                redacted_url(url),
                ttl.as_secs()
            ))),
            None => Ok(()),
        }
    }

    /// Download the certificate at `url` (within the download budget), check its chain and
    /// subject, and cache it (replacing an older download); a URL whose certificate cannot be
    /// used is remembered as failed.
    async fn fetch(&self, url: &Url) -> Result<Arc<CertificateDer<'static>>, WebhookAuthError> {
        let taken = {
            let mut budget = self
                .inner
                .downloads
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            budget
                .take(self.inner.clock.now())
                .map_err(|wait| (wait, budget.burst, budget.refill))
        };
        if let Err((wait, burst, refill)) = taken {
            return Err(WebhookAuthError::unauthorized(format!(
                "too many certificate downloads for uncached URLs: {} is not downloaded (at most \
                 {burst} at once, then one every {} s; the next in {} s)",
                redacted_url(url),
                refill.as_secs(),
                wait.as_secs().max(1)
            )));
        }
        let checked = match self.download(url).await {
            Ok(der) => self
                .check_certificate(&der)
                .map(|not_after| (der, not_after)),
            Err(error) => Err(error),
        };
        let (der, not_after) = match checked {
            Ok((der, not_after)) => (Arc::new(der), not_after),
            Err(error) => {
                if error.kind() == WebhookAuthErrorKind::Unauthorized {
                    let now = self.inner.clock.now();
                    self.inner
                        .failed
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remember(url.as_str(), error.reason(), now);
                }
                return Err(error);
            }
        };
        let mut cache = self
            .inner
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if cache.len() < MAX_CACHED_CERTIFICATES || cache.contains_key(url.as_str()) {
            let fetched = self.inner.clock.now();
            let der = Arc::clone(&der);
            let trusted_until = self.trusted_until(not_after);
            cache.insert(
                url.as_str().to_owned(),
                Cached {
                    der,
                    fetched,
                    trusted_until,
                },
            );
        }
        Ok(der)
    }

    async fn download(&self, url: &Url) -> Result<CertificateDer<'static>, WebhookAuthError> {
        let limit = self.inner.max_certificate_bytes;
        // Messages and logs name the URL without its query.
        let shown = redacted_url(url);
        tracing::debug!(certificate_url = %shown, "downloading the webhook signing certificate");
        let mut response = self
            .inner
            .http
            .get(url.clone())
            .send()
            .await
            .map_err(|error| {
                WebhookAuthError::unavailable(format!(
                    "the certificate at {shown} could not be downloaded: {}",
                    reqwest_error_text(&error)
                ))
            })?;
        let status = response.status();
        if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
            return Err(WebhookAuthError::unavailable(format!(
                "the certificate download from {shown} answered HTTP {status}"
            )));
        }
        if status.is_redirection() {
            return Err(WebhookAuthError::unauthorized(format!(
                "the certificate URL {shown} redirects (HTTP {status}); redirects are not followed"
            )));
        }
        if !status.is_success() {
            return Err(WebhookAuthError::unauthorized(format!(
                "the certificate download from {shown} answered HTTP {status}"
            )));
        }
        if response
            .content_length()
            .is_some_and(|length| length > limit as u64)
        {
            return Err(WebhookAuthError::unauthorized(format!(
                "the certificate at {shown} is larger than {limit} bytes"
            )));
        }
        let mut body = BytesMut::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > limit {
                        return Err(WebhookAuthError::unauthorized(format!(
                            "the certificate at {shown} is larger than {limit} bytes"
                        )));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(error) => {
                    return Err(WebhookAuthError::unavailable(format!(
                        "the certificate download from {shown} broke off: {}",
                        reqwest_error_text(&error)
                    )));
                }
            }
        }
        let body = body.freeze();
        if body.starts_with(b"-----BEGIN") {
            CertificateDer::from_pem_slice(&body).map_err(|error| {
                WebhookAuthError::unauthorized(format!(
                    "the certificate at {shown} is not a PEM certificate: {error}"
                ))
            })
        } else {
            Ok(CertificateDer::from(body.to_vec()))
        }
    }

    /// Steps 5–7: chain, subject, signature; only the signature when `trusted` (the chain and
    /// subject passed within [`CHAIN_RECHECK_INTERVAL`]). The certificate's `notAfter` (unix
    /// seconds) when the chain was checked.
    fn check(
        &self,
        der: &CertificateDer<'_>,
        body: &[u8],
        signature: &[u8],
        trusted: bool,
    ) -> Result<Option<i64>, WebhookAuthError> {
        let (certificate, not_after) = if trusted {
            let certificate = EndEntityCert::try_from(der).map_err(|error| {
                WebhookAuthError::unauthorized(format!(
                    "the certificate is not valid X.509: {error}"
                ))
            })?;
            (certificate, None)
        } else {
            let (certificate, not_after) = self.checked_certificate(der)?;
            (certificate, Some(not_after))
        };
        certificate
            .verify_signature(
                webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256,
                body,
                signature,
            )
            .map_err(|error| {
                WebhookAuthError::unauthorized(format!(
                    "the signature does not match the body: {error}"
                ))
            })?;
        Ok(not_after)
    }

    /// Steps 5–6: chain and subject; the certificate's `notAfter` (unix seconds).
    fn check_certificate(&self, der: &CertificateDer<'_>) -> Result<i64, WebhookAuthError> {
        self.checked_certificate(der)
            .map(|(_, not_after)| not_after)
    }

    fn checked_certificate<'a>(
        &self,
        der: &'a CertificateDer<'a>,
    ) -> Result<(EndEntityCert<'a>, i64), WebhookAuthError> {
        self.inner
            .chain_checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let certificate = EndEntityCert::try_from(der).map_err(|error| {
            WebhookAuthError::unauthorized(format!("the certificate is not valid X.509: {error}"))
        })?;
        certificate
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &self.inner.anchors,
                &self.inner.intermediates,
                UnixTime::now(),
                SigningEku,
                None,
                None,
            )
            .map_err(|error| {
                WebhookAuthError::unauthorized(format!(
                    "the certificate does not chain to a configured trust anchor: {error}"
                ))
            })?;
        let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|error| {
            WebhookAuthError::unauthorized(format!("the certificate could not be read: {error}"))
        })?;
        let organizations: Vec<&str> = parsed
            .subject()
            .iter_organization()
            .filter_map(|attribute| attribute.as_str().ok())
            .collect();
        if !organizations.contains(&REQUIRED_ORGANIZATION) {
            return Err(WebhookAuthError::unauthorized(format!(
                "the certificate's subject organisation is {organizations:?}, not \
                 {REQUIRED_ORGANIZATION}"
            )));
        }
        let names = subject_names(&parsed);
        let allowed = &self.inner.subject_names;
        if !names
            .iter()
            .any(|name| allowed.contains(&name.to_ascii_lowercase()))
        {
            return Err(WebhookAuthError::unauthorized(format!(
                "the certificate is issued to {names:?}, not to the Partner Center signing \
                 certificate ({}): a Microsoft certificate of another service is refused",
                allowed.join(", ")
            )));
        }
        Ok((certificate, parsed.validity().not_after.timestamp()))
    }
}

/// The subject's common names, then the DNS names of its subjectAltName extension.
fn subject_names(certificate: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    let mut names: Vec<String> = certificate
        .subject()
        .iter_common_name()
        .filter_map(|attribute| attribute.as_str().ok())
        .map(ToOwned::to_owned)
        .collect();
    if let Ok(Some(alternative)) = certificate.subject_alternative_name() {
        for name in &alternative.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push((*dns).to_owned());
            }
        }
    }
    names
}

/// EKU rule for the signing certificate (and its intermediates): none, or one of serverAuth,
/// clientAuth, anyExtendedKeyUsage.
#[derive(Debug, Clone, Copy)]
struct SigningEku;

impl ExtendedKeyUsageValidator for SigningEku {
    fn validate(&self, iter: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        let accepted = [
            KeyPurposeId::new(EKU_SERVER_AUTH),
            KeyPurposeId::new(EKU_CLIENT_AUTH),
            KeyPurposeId::new(EKU_ANY),
        ];
        let mut present = Vec::new();
        for id in iter {
            let id = id?;
            if accepted.contains(&id) {
                return Ok(());
            }
            present.push(id.to_decoded_oid());
        }
        if present.is_empty() {
            return Ok(());
        }
        Err(webpki::Error::RequiredEkuNotFoundContext(
            webpki::RequiredEkuNotFoundContext {
                required: webpki::KeyUsage::server_auth(),
                present,
            },
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// The typestate
// ---------------------------------------------------------------------------------------------

/// A received webhook whose body must not be read yet. Build it from the request's headers
/// and raw body, then [`verify`](Self::verify) it.
pub struct UnverifiedWebhook {
    authorization: Option<String>,
    ms_signature: Option<String>,
    certificate_url: Option<String>,
    algorithm: Option<String>,
    body: Bytes,
}

impl fmt::Debug for UnverifiedWebhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnverifiedWebhook")
            .field("certificate_url", &self.certificate_url)
            .field("algorithm", &self.algorithm)
            .field("has_authorization", &self.authorization.is_some())
            .field("has_ms_signature", &self.ms_signature.is_some())
            .field("body_len", &self.body.len())
            .finish()
    }
}

fn present(value: Option<String>) -> Option<String> {
    value.filter(|value| !value.trim().is_empty())
}

impl UnverifiedWebhook {
    /// From an HTTP request's headers (`http::HeaderMap`, as `lambda_http` and axum hand them
    /// over) and its raw body bytes (never a re-serialisation).
    pub fn from_headers(headers: &HeaderMap, body: impl Into<Bytes>) -> Self {
        let header = |name: &str| {
            headers
                .get(name)
                .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        };
        Self {
            authorization: present(header("authorization")),
            ms_signature: present(header(MS_SIGNATURE_HEADER)),
            certificate_url: present(header(CERTIFICATE_URL_HEADER)),
            algorithm: present(header(SIGNATURE_ALGORITHM_HEADER)),
            body: body.into(),
        }
    }

    /// From `(name, value)` pairs (names case-insensitive; the first of repeated headers wins).
    pub fn from_pairs<'a, I>(headers: I, body: impl Into<Bytes>) -> Self
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        let mut map: HashMap<String, String> = HashMap::new();
        for (name, value) in headers {
            map.entry(name.trim().to_ascii_lowercase())
                .or_insert_with(|| value.to_owned());
        }
        let mut take = |name: &str| present(map.remove(name));
        Self {
            authorization: take("authorization"),
            ms_signature: take(MS_SIGNATURE_HEADER),
            certificate_url: take(CERTIFICATE_URL_HEADER),
            algorithm: take(SIGNATURE_ALGORITHM_HEADER),
            body: body.into(),
        }
    }

    /// The body's length (for logs; the body itself is only readable once verified).
    pub fn body_len(&self) -> usize {
        self.body.len()
    }

    /// `X-MS-Certificate-Url`, for logs.
    pub fn certificate_url(&self) -> Option<&str> {
        self.certificate_url.as_deref()
    }

    /// Steps 1–2 (no I/O): the decoded signature, the certificate URL and nothing wrong with
    /// the algorithm.
    fn headers(&self) -> Result<(Vec<u8>, &str), WebhookAuthError> {
        let mut missing = Vec::new();
        if self.ms_signature.is_none() && self.authorization.is_none() {
            missing.push("Authorization (or x-ms-signature)");
        }
        if self.certificate_url.is_none() {
            missing.push("X-MS-Certificate-Url");
        }
        if self.algorithm.is_none() {
            missing.push("X-MS-Signature-Algorithm");
        }
        if !missing.is_empty() {
            return Err(WebhookAuthError::bad_request(format!(
                "missing header(s): {}",
                missing.join(", ")
            )));
        }
        let algorithm = self.algorithm.as_deref().unwrap_or_default().trim();
        if !algorithm.eq_ignore_ascii_case(SIGNATURE_ALGORITHM) {
            return Err(WebhookAuthError::unauthorized(format!(
                "unsupported signature algorithm '{algorithm}' (only {SIGNATURE_ALGORITHM})"
            )));
        }
        let signature = match (&self.ms_signature, &self.authorization) {
            (Some(value), _) => signature_value(MS_SIGNATURE_HEADER, value, true)?,
            (None, Some(value)) => signature_value("Authorization", value, false)?,
            (None, None) => {
                return Err(WebhookAuthError::bad_request(
                    "missing header(s): Authorization (or x-ms-signature)",
                ));
            }
        };
        let url = self.certificate_url.as_deref().unwrap_or_default();
        Ok((signature, url))
    }

    /// Verifies the webhook (see the [module docs](self) for the steps). Only a success gives
    /// access to the body.
    pub async fn verify(
        self,
        verifier: &WebhookVerifier,
    ) -> Result<VerifiedWebhook, WebhookAuthError> {
        let (signature, raw_url) = self.headers()?;
        let url = verifier.inner.policy.check(raw_url)?;
        let certificate = verifier.certificate(&url).await?;
        match verifier.check(
            &certificate.der,
            &self.body,
            &signature,
            certificate.trusted,
        ) {
            Ok(Some(not_after)) => verifier.trust(&url, &certificate.der, not_after),
            Ok(None) => {}
            Err(error) => {
                // A certificate rotated at the same URL: download it again, rate-limited per
                // URL.
                let now = verifier.inner.clock.now();
                let stale = certificate.fetched.is_some_and(|fetched| {
                    now.saturating_duration_since(fetched) >= verifier.inner.refresh_interval
                });
                if !stale {
                    return Err(error);
                }
                let fresh = verifier.refresh(&url, &certificate.der).await?;
                if fresh == certificate.der {
                    return Err(error);
                }
                verifier.check(&fresh, &self.body, &signature, false)?;
            }
        }
        Ok(VerifiedWebhook {
            body: self.body,
            certificate_url: url.to_string(),
        })
    }
}

/// `Signature <base64>` (scheme case-insensitive); for `x-ms-signature` a bare base64 value
/// is accepted too.
fn signature_value(
    header: &str,
    value: &str,
    bare_allowed: bool,
) -> Result<Vec<u8>, WebhookAuthError> {
    let value = value.trim();
    let encoded = match value.split_once(char::is_whitespace) {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("Signature") => rest.trim(),
        Some((scheme, _)) => {
            return Err(WebhookAuthError::unauthorized(format!(
                "the {header} header has the scheme '{scheme}', not 'Signature'"
            )));
        }
        None if bare_allowed => value,
        None => {
            return Err(WebhookAuthError::unauthorized(format!(
                "the {header} header is not 'Signature <base64>'"
            )));
        }
    };
    let signature = STANDARD.decode(encoded).map_err(|error| {
        WebhookAuthError::unauthorized(format!("the {header} signature is not base64: {error}"))
    })?;
    if signature.is_empty() {
        return Err(WebhookAuthError::unauthorized(format!(
            "the {header} signature is empty"
        )));
    }
    Ok(signature)
}

/// A webhook whose signature was verified: its body may be parsed.
#[derive(Debug, Clone)]
pub struct VerifiedWebhook {
    body: Bytes,
    certificate_url: String,
}

impl VerifiedWebhook {
    /// The verified raw body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The verified raw body, owned.
    pub fn into_body(self) -> Bytes {
        self.body
    }

    /// The URL of the certificate that signed it.
    pub fn certificate_url(&self) -> &str {
        &self.certificate_url
    }

    /// The body as a [`WebhookEvent`] (a leading UTF-8 byte-order mark is skipped, as for the
    /// other bodies the connector reads; the signature covers the body as sent, mark included).
    pub fn event(&self) -> Result<WebhookEvent, serde_json::Error> {
        let body = self.body.strip_prefix(UTF8_BOM).unwrap_or(&self.body);
        serde_json::from_slice(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(insecure: &[(&str, u16)]) -> UrlPolicy {
        UrlPolicy {
            https_hosts: vec![DEFAULT_CERTIFICATE_HOST.to_owned()],
            insecure: insecure
                .iter()
                .map(|(host, port)| ((*host).to_owned(), *port))
                .collect(),
        }
    }

    fn webhook(pairs: &[(&str, &str)]) -> UnverifiedWebhook {
        UnverifiedWebhook::from_pairs(pairs.iter().copied(), Bytes::from_static(b"{}"))
    }

    const URL: &str = "https://3psostorageacct.blob.core.windows.net/cert/pcnotifications-dispatch.microsoft.com.cer";

    #[test]
    fn the_documented_certificate_url_is_allowed_and_others_are_not() {
        let policy = policy(&[]);
        assert!(policy.check(URL).is_ok());
        assert!(
            policy
                .check("https://3PSOSTORAGEACCT.blob.core.windows.net/cert/x.cer")
                .is_ok()
        );
        for bad in [
            "http://3psostorageacct.blob.core.windows.net/cert/x.cer",
            "https://3psostorageacct.blob.core.windows.net:8443/cert/x.cer",
            "https://evil.blob.core.windows.net/cert/x.cer",
            "https://3psostorageacct.blob.core.windows.net.evil.example/cert/x.cer",
            "https://user@3psostorageacct.blob.core.windows.net/cert/x.cer",
            "ftp://3psostorageacct.blob.core.windows.net/cert/x.cer",
            "http://127.0.0.1:8080/cert/x.cer",
            "/cert/x.cer",
            "https://3psostorageacct.blob.core.windows.net/cert/x.cer?v=1",
            "https://3psostorageacct.blob.core.windows.net/cert/x.cer#x",
        ] {
            let err = policy.check(bad).unwrap_err();
            assert_eq!(err.kind(), WebhookAuthErrorKind::Unauthorized, "{bad}");
        }
    }

    #[test]
    fn insecure_hosts_allow_exactly_their_host_and_port() {
        let policy = policy(&[("127.0.0.1", 8080)]);
        assert!(policy.check("http://127.0.0.1:8080/cert/x.cer").is_ok());
        assert!(policy.check("http://127.0.0.1:8081/cert/x.cer").is_err());
        assert!(policy.check("http://localhost:8080/cert/x.cer").is_err());
    }

    #[test]
    fn missing_headers_are_bad_requests() {
        for pairs in [
            vec![],
            vec![
                ("X-MS-Certificate-Url", URL),
                ("X-MS-Signature-Algorithm", "rsa-sha256"),
            ],
            vec![
                ("Authorization", "Signature AAAA"),
                ("X-MS-Signature-Algorithm", "rsa-sha256"),
            ],
            vec![
                ("Authorization", "Signature AAAA"),
                ("X-MS-Certificate-Url", URL),
            ],
            vec![
                ("Authorization", "  "),
                ("X-MS-Certificate-Url", URL),
                ("X-MS-Signature-Algorithm", "rsa-sha256"),
            ],
        ] {
            let err = webhook(&pairs).headers().unwrap_err();
            assert_eq!(err.kind(), WebhookAuthErrorKind::BadRequest, "{pairs:?}");
            assert_eq!(err.status_code(), 400);
        }
    }

    #[test]
    fn signatures_are_read_from_either_header_in_either_form() {
        let base = [
            ("X-MS-Certificate-Url", URL),
            ("X-MS-Signature-Algorithm", "RSA-SHA256"),
        ];
        let with = |extra: (&'static str, &'static str)| {
            let mut pairs = base.to_vec();
            pairs.push(extra);
            webhook(&pairs).headers().map(|(signature, _)| signature)
        };
        assert_eq!(
            with(("Authorization", "Signature AQID")).unwrap(),
            [1, 2, 3]
        );
        assert_eq!(
            with(("authorization", "signature  AQID ")).unwrap(),
            [1, 2, 3]
        );
        assert_eq!(
            with(("x-ms-signature", "Signature AQID")).unwrap(),
            [1, 2, 3]
        );
        assert_eq!(with(("x-ms-signature", "AQID")).unwrap(), [1, 2, 3]);
        for bad in [
            ("Authorization", "Bearer AQID"),
            ("Authorization", "AQID"),
            ("Authorization", "Signature not*base64"),
            ("x-ms-signature", "Bearer AQID"),
        ] {
            let err = with(bad).unwrap_err();
            assert_eq!(err.kind(), WebhookAuthErrorKind::Unauthorized, "{bad:?}");
        }
    }

    #[test]
    fn only_rsa_sha256_is_accepted() {
        let err = webhook(&[
            ("Authorization", "Signature AQID"),
            ("X-MS-Certificate-Url", URL),
            ("X-MS-Signature-Algorithm", "rsa-sha1"),
        ])
        .headers()
        .unwrap_err();
        assert_eq!(err.kind(), WebhookAuthErrorKind::Unauthorized);
    }

    #[test]
    fn the_unverified_body_is_not_shown_in_debug_output() {
        let webhook = UnverifiedWebhook::from_pairs(
            [("X-MS-Certificate-Url", URL)],
            Bytes::from_static(b"{\"EventName\":\"referral-created\"}"),
        );
        let debug = format!("{webhook:?}");
        assert!(!debug.contains("referral-created"), "{debug}");
        assert!(debug.contains("body_len"), "{debug}");
    }

    #[test]
    fn the_download_budget_allows_a_burst_then_one_download_per_refill_interval() {
        let start = Instant::now();
        let mut budget = DownloadBudget {
            available: 2,
            burst: 2,
            refill: Duration::from_secs(60),
            since: start,
        };
        assert!(budget.take(start).is_ok());
        assert!(budget.take(start).is_ok());
        assert_eq!(budget.take(start), Err(Duration::from_secs(60)));
        let later = start + Duration::from_secs(45);
        assert_eq!(budget.take(later), Err(Duration::from_secs(15)));
        assert!(budget.take(start + Duration::from_secs(60)).is_ok());
        assert!(budget.take(start + Duration::from_secs(61)).is_err());
        // A long quiet time refills to the burst, never beyond it.
        let quiet = start + Duration::from_secs(3600);
        assert!(budget.take(quiet).is_ok());
        assert!(budget.take(quiet).is_ok());
        assert!(budget.take(quiet).is_err());
    }

    #[test]
    fn the_negative_cache_forgets_expired_then_oldest_urls_and_stays_bounded() {
        let start = Instant::now();
        let mut failed = FailedUrls {
            until: HashMap::new(),
            ttl: Duration::from_secs(10),
            capacity: 3,
        };
        for (i, url) in ["a", "b", "c"].iter().enumerate() {
            failed.remember(url, "404", start + Duration::from_secs(i as u64));
        }
        assert_eq!(failed.refused("a", start), Some("404"));
        // Full: the oldest ("a") goes.
        failed.remember("d", "404", start + Duration::from_secs(3));
        assert_eq!(failed.len(), 3);
        assert_eq!(failed.refused("a", start), None);
        assert!(
            failed
                .refused("d", start + Duration::from_secs(12))
                .is_some()
        );
        // Expired entries go first, and an expired URL is not refused.
        failed.remember("e", "404", start + Duration::from_secs(12));
        assert!(failed.len() <= 3);
        assert_eq!(failed.refused("b", start + Duration::from_secs(12)), None);
        assert!(
            failed
                .refused("e", start + Duration::from_secs(12))
                .is_some()
        );
    }

    #[test]
    fn a_verifier_needs_an_allowed_subject_name() {
        let mut config = WebhookVerifierConfig::new(sandbox_root(), "");
        config.allowed_subject_names = vec![" ".to_owned()];
        let err = WebhookVerifier::new(config).unwrap_err();
        assert!(err.to_string().contains("WEBHOOK_CERT_SUBJECTS"), "{err}");
    }

    /// A self-signed CA certificate (any will do as a trust anchor here).
    fn sandbox_root() -> &'static str {
        include_str!("../../../../sandbox/certs/root.cert.pem")
    }

    #[test]
    fn a_verifier_needs_a_trust_anchor() {
        let err = WebhookVerifier::new(WebhookVerifierConfig::new("", "")).unwrap_err();
        assert!(err.to_string().contains("no trust anchor"), "{err}");
        let err = WebhookVerifier::new(WebhookVerifierConfig::new(
            "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
            "",
        ))
        .unwrap_err();
        assert!(matches!(err, HttpAdapterError::Config(_)), "{err:?}");
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    /// Header text: any string, and strings made of what the signature headers hold.
    fn header_text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "(Signature|signature|Bearer)?[ \t\u{a0}]{0,2}[A-Za-z0-9+/=\u{e9}]{0,24}",
            "(https?|ftp)://[a-z0-9.:@\u{e9}\\-]{0,20}(/[a-z.\u{e9}]{0,10}){0,3}(\\?[a-z=]{0,8})?(#[a-z]{0,4})?",
        ]
    }

    proptest! {
        #[test]
        fn signature_headers_are_read_or_refused_without_panic(
            authorization in header_text(),
            signature in header_text(),
            url in header_text(),
            algorithm in prop_oneof![Just("rsa-sha256".to_owned()), header_text()],
        ) {
            let pairs = [
                ("Authorization", authorization.as_str()),
                (MS_SIGNATURE_HEADER, signature.as_str()),
                (CERTIFICATE_URL_HEADER, url.as_str()),
                (SIGNATURE_ALGORITHM_HEADER, algorithm.as_str()),
            ];
            for skip in 0..=pairs.len() {
                let webhook = UnverifiedWebhook::from_pairs(
                    pairs.iter().enumerate().filter(|(i, _)| *i != skip).map(|(_, pair)| *pair),
                    Bytes::new(),
                );
                if let Err(error) = webhook.headers() {
                    prop_assert!(matches!(error.status_code(), 400 | 401), "{}", error.status_code());
                }
            }
        }

        #[test]
        fn certificate_urls_are_checked_without_panic(url in header_text()) {
            let policy = UrlPolicy {
                https_hosts: vec![DEFAULT_CERTIFICATE_HOST.to_owned()],
                insecure: vec![("127.0.0.1".to_owned(), 8080)],
            };
            if let Ok(checked) = policy.check(&url) {
                prop_assert!(checked.query().is_none() && checked.fragment().is_none());
            }
        }
    }
}
