//! Function URLs: an HTTP request to `/lambda-url/<function>/<path>` becomes an invocation with
//! a payload of format 2.0 (the shape Lambda gives Function URLs), and the function's answer
//! (`statusCode`, `headers`, `cookies`, `body`, `isBase64Encoded`) the HTTP response, as
//! documented in docs/aws.md#the-local-lambda. A function error, a crash or a timeout answers
//! 502 as a Function URL does.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{InvokeError, Invoker};

/// Serves every function's URL on `listener` until the local Lambda stops.
pub(super) async fn serve(
    listener: TcpListener,
    invoker: Invoker,
    mut stopped: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/lambda-url/{function}", any(root))
        .route("/lambda-url/{function}/", any(root))
        .route("/lambda-url/{function}/{*path}", any(nested))
        .with_state(invoker)
        .into_make_service_with_connect_info::<SocketAddr>();
    tokio::select! {
        result = axum::serve(listener, app) => {
            if let Err(error) = result {
                tracing::error!(%error, "local Function URLs stopped");
            }
        }
        _ = stopped.wait_for(|stop| *stop) => {}
    }
}

async fn root(
    State(invoker): State<Invoker>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(function): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = HttpRequest::new(method, "/".to_owned(), &uri, headers, body, peer);
    invoke(&invoker, &function, request).await
}

async fn nested(
    State(invoker): State<Invoker>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((function, path)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = HttpRequest::new(method, format!("/{path}"), &uri, headers, body, peer);
    invoke(&invoker, &function, request).await
}

/// What the payload is made of.
#[derive(Debug)]
pub(super) struct HttpRequest {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub peer: SocketAddr,
}

impl HttpRequest {
    fn new(
        method: Method,
        path: String,
        uri: &Uri,
        headers: HeaderMap,
        body: Bytes,
        peer: SocketAddr,
    ) -> Self {
        Self {
            method,
            path,
            query: uri.query().unwrap_or_default().to_owned(),
            headers,
            body,
            peer,
        }
    }
}

async fn invoke(invoker: &Invoker, function: &str, request: HttpRequest) -> Response {
    let payload = payload(function, &request);
    match invoker
        .invoke(function, Bytes::from(payload.to_string()))
        .await
    {
        Ok(answer) => http_response(&answer),
        Err(InvokeError::UnknownFunction(_)) => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({ "Message": "Function not found" })),
        )
            .into_response(),
        Err(error) => {
            tracing::warn!(%function, %error, "a Function URL invocation failed");
            (
                StatusCode::BAD_GATEWAY,
                axum::Json(json!({ "Message": "Internal Server Error" })),
            )
                .into_response()
        }
    }
}

/// The payload (format 2.0) of a Function URL request.
pub(super) fn payload(function: &str, request: &HttpRequest) -> Value {
    // Header names lower-cased, repeated values joined with commas; cookies apart.
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    let mut cookies = Vec::new();
    for (name, value) in &request.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        if name == "cookie" {
            cookies.extend(value.split(';').map(|c| c.trim().to_owned()));
            continue;
        }
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|joined| {
                joined.push(',');
                joined.push_str(&value);
            })
            .or_insert(value);
    }
    let mut parameters: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in url::form_urlencoded::parse(request.query.as_bytes()) {
        parameters
            .entry(name.into_owned())
            .and_modify(|joined| {
                joined.push(',');
                joined.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    let (body, encoded) = match std::str::from_utf8(&request.body) {
        Ok(text) => (text.to_owned(), false),
        Err(_) => (BASE64.encode(&request.body), true),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let user_agent = headers.get("user-agent").cloned().unwrap_or_default();
    let mut payload = json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": request.path,
        "rawQueryString": request.query,
        "headers": headers,
        "requestContext": {
            "accountId": "anonymous",
            "apiId": function,
            "domainName": format!("{function}.lambda-url.localhost"),
            "domainPrefix": function,
            "http": {
                "method": request.method.as_str(),
                "path": request.path,
                "protocol": "HTTP/1.1",
                "sourceIp": request.peer.ip().to_string(),
                "userAgent": user_agent,
            },
            "requestId": uuid::Uuid::new_v4().to_string(),
            "routeKey": "$default",
            "stage": "$default",
            "time": chrono::Utc::now().format("%d/%b/%Y:%H:%M:%S %z").to_string(),
            "timeEpoch": now,
        },
        "isBase64Encoded": encoded,
    });
    if !request.body.is_empty() {
        payload["body"] = Value::String(body);
    }
    if !cookies.is_empty() {
        payload["cookies"] = json!(cookies);
    }
    if !parameters.is_empty() {
        payload["queryStringParameters"] = json!(parameters);
    }
    payload
}

/// The HTTP response for a function's answer: the documented response shape, or any other JSON
/// as a 200 body (Function URLs infer that format).
pub(super) fn http_response(answer: &[u8]) -> Response {
    let parsed: Option<Map<String, Value>> = serde_json::from_slice(answer).ok();
    let Some(shaped) = parsed.filter(|object| object.contains_key("statusCode")) else {
        return (
            StatusCode::OK,
            [("content-type", "application/json")],
            Body::from(answer.to_vec()),
        )
            .into_response();
    };
    let status = shaped["statusCode"]
        .as_u64()
        .and_then(|code| u16::try_from(code).ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = Response::builder().status(status);
    let mut add = |name: &str, value: &str| {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            response = std::mem::take(&mut response).header(name, value);
        }
    };
    for (name, value) in shaped
        .get("headers")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        if let Some(value) = value.as_str() {
            add(name, value);
        }
    }
    let single = shaped.get("headers").and_then(Value::as_object);
    for (name, values) in shaped
        .get("multiValueHeaders")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(name, _)| !single.is_some_and(|single| single.contains_key(*name)))
    {
        for value in values
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            add(name, value);
        }
    }
    for cookie in shaped
        .get("cookies")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        add("set-cookie", cookie);
    }
    let body = shaped
        .get("body")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let body = if shaped.get("isBase64Encoded").and_then(Value::as_bool) == Some(true) {
        BASE64.decode(body).unwrap_or_default()
    } else {
        body.as_bytes().to_vec()
    };
    response
        .body(Body::from(body))
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn request(headers: &[(&str, &str)], query: &str, body: &[u8]) -> HttpRequest {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        HttpRequest {
            method: Method::POST,
            path: "/dataverse".to_owned(),
            query: query.to_owned(),
            headers: map,
            body: Bytes::copy_from_slice(body),
            peer: "127.0.0.1:4000".parse().unwrap(),
        }
    }

    #[test]
    fn a_request_becomes_a_payload_of_format_2_0() {
        let payload = payload(
            "crm-events",
            &request(
                &[
                    ("X-Forwarded-For", "10.0.0.1"),
                    ("x-forwarded-for", "10.0.0.2"),
                    ("Cookie", "a=1; b=2"),
                    ("User-Agent", "probe"),
                ],
                "code=x&code=y",
                b"{\"a\":1}",
            ),
        );
        assert_eq!(payload["version"], "2.0");
        assert_eq!(payload["rawPath"], "/dataverse");
        assert_eq!(payload["rawQueryString"], "code=x&code=y");
        assert_eq!(payload["queryStringParameters"]["code"], "x,y");
        assert_eq!(payload["headers"]["x-forwarded-for"], "10.0.0.1,10.0.0.2");
        assert!(payload["headers"].get("cookie").is_none());
        assert_eq!(payload["cookies"], json!(["a=1", "b=2"]));
        assert_eq!(payload["requestContext"]["http"]["method"], "POST");
        assert_eq!(payload["requestContext"]["http"]["sourceIp"], "127.0.0.1");
        assert_eq!(payload["requestContext"]["http"]["userAgent"], "probe");
        assert_eq!(payload["body"], "{\"a\":1}");
        assert_eq!(payload["isBase64Encoded"], false);
    }

    #[test]
    fn a_body_that_is_not_utf8_is_base64_encoded_and_an_empty_one_left_out() {
        let binary = payload("f", &request(&[], "", &[0xff, 0x00]));
        assert_eq!(binary["isBase64Encoded"], true);
        assert_eq!(binary["body"], BASE64.encode([0xff, 0x00]));
        let empty = payload("f", &request(&[], "", b""));
        assert!(empty.get("body").is_none());
        assert!(empty.get("queryStringParameters").is_none());
    }

    #[tokio::test]
    async fn a_shaped_answer_becomes_the_http_response() {
        let answer = json!({
            "statusCode": 409,
            "headers": {"content-type": "application/json", "x-one": "1"},
            "multiValueHeaders": {"x-one": ["ignored"], "x-two": ["a", "b"]},
            "cookies": ["c=1"],
            "body": BASE64.encode("{\"outcome\":\"in_progress\"}"),
            "isBase64Encoded": true,
        });
        let response = http_response(answer.to_string().as_bytes());
        assert_eq!(response.status(), StatusCode::CONFLICT);
        let headers = response.headers();
        assert_eq!(headers.get_all("x-one").iter().count(), 1);
        assert_eq!(headers.get_all("x-two").iter().count(), 2);
        assert_eq!(headers["set-cookie"], "c=1");
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        assert_eq!(&body[..], b"{\"outcome\":\"in_progress\"}");
    }

    #[tokio::test]
    async fn any_other_answer_is_a_200_with_the_answer_as_body() {
        let response = http_response(b"{\"ok\":true}");
        assert_eq!(response.status(), StatusCode::OK);
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        assert_eq!(&body[..], b"{\"ok\":true}");
        let bad_status = http_response(b"{\"statusCode\": 99999}");
        assert_eq!(bad_status.status(), StatusCode::BAD_GATEWAY);
    }
}
