//! The HTTP edge: the page (embedded in the binary), `/r/<room>`, `/check`, `/healthz`, `/ws`,
//! `/metrics` (see [`crate::metrics`]) and `/files/<id>` (files shared through the server, see
//! [`crate::files`]).

use crate::client_ip::PeerAddr;
use crate::AppState;
use axum::extract::connect_info::IntoMakeServiceWithConnectInfo;
use axum::extract::DefaultBodyLimit;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::borrow::Cow;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/assets.rs"));
}

/// The page's Content-Security-Policy: only our own scripts, styles and connections.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// The router as served: with each connection's TCP peer address ([`PeerAddr`]) for the handlers.
pub fn app(state: AppState) -> IntoMakeServiceWithConnectInfo<Router, PeerAddr> {
    router(state).into_make_service_with_connect_info::<PeerAddr>()
}

pub fn router(state: AppState) -> Router {
    let metrics = state.config.metrics;
    let router = Router::new();
    // Off: /metrics is an unknown path like any other.
    let router = if metrics { router.route("/metrics", get(crate::metrics::handler)) } else { router };
    router
        .route("/healthz", get(|| async { "ok" }))
        .route("/ws", get(crate::ws::upgrade))
        .route("/r/{*room}", get(room_page))
        // The connectivity check: the same page, which shows its check view at this path.
        .route("/check", get(check_page))
        // The upload handler enforces the offered size itself while streaming.
        .route("/files/{id}", get(crate::files::download).put(crate::files::upload).layer(DefaultBodyLimit::disable()))
        // A recording's one file, through the signed link only its room's hosts get.
        .route("/recordings/{id}/{file}", get(recording_download))
        .fallback(get(asset))
        .with_state(state)
}

/// `exp=<unix s>&sig=<hex>` of a recording's link; `None` when malformed.
fn recording_link(query: Option<&str>) -> Option<(u64, &str)> {
    let (mut exp, mut sig) = (None, None);
    for pair in query?.split('&') {
        match pair.split_once('=') {
            Some(("exp", v)) => exp = v.parse().ok(),
            Some(("sig", v)) => sig = Some(v),
            _ => {}
        }
    }
    Some((exp?, sig?))
}

async fn recording_download(
    State(app): State<AppState>,
    Path((id, file)): Path<(String, String)>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let not_found = || (StatusCode::NOT_FOUND, "No such recording, or the link has expired.").into_response();
    let Some(store) = &app.recordings else { return not_found() };
    let Some((exp, sig)) = recording_link(query.as_deref()) else { return not_found() };
    let Some(path) = store.verify(&id, &file, exp, sig) else { return not_found() };
    let Ok(f) = tokio::fs::File::open(&path).await else { return not_found() };
    let size = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    // As a shared file's download: a reader that stops reading lets go of the file after the
    // transfer timeout, and the whole download has the time its size needs at the slowest rate.
    let limits = crate::files::FileLimits::from(&*app.config);
    let deadline = tokio::time::Instant::now() + limits.transfer_time(size);
    let stream = crate::files::send_file(f, deadline, app.config.file_transfer_timeout, ());
    let mut res = axum::body::Body::from_stream(stream).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/webm"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"huddle-{id}.webm\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
    res
}

async fn room_page(State(app): State<AppState>, Path(_room): Path<String>) -> Response {
    // The page reads the room from its own URL.
    serve(&app, "/index.html").await
}

async fn check_page(State(app): State<AppState>) -> Response {
    serve(&app, "/index.html").await
}

async fn asset(State(app): State<AppState>, uri: Uri) -> Response {
    let path = match uri.path() {
        "/" => "/index.html",
        p => p,
    };
    serve(&app, path).await
}

async fn serve(app: &AppState, path: &str) -> Response {
    let body: Option<Cow<'static, [u8]>> = match &app.config.web_dir {
        Some(dir) => read_from_dir(dir, path).await.map(Cow::Owned),
        None => embedded::ASSETS.iter().find(|(p, _)| *p == path).map(|(_, b)| Cow::Borrowed(*b)),
    };
    let Some(body) = body else {
        return (StatusCode::NOT_FOUND, "Not found").into_response();
    };
    let mut res = body.into_owned().into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime(path)));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        "permissions-policy",
        HeaderValue::from_static("camera=(self), microphone=(self), display-capture=(self), speaker-selection=(self)"),
    );
    res
}

/// Reads `path` under `dir`, refusing anything that could step outside it.
async fn read_from_dir(dir: &std::path::Path, path: &str) -> Option<Vec<u8>> {
    let rel = path.trim_start_matches('/');
    if rel.split('/').any(|part| part.is_empty() || part == ".." || part.starts_with('.') || part.contains('\\')) {
        return None;
    }
    tokio::fs::read(dir.join(rel)).await.ok()
}

fn mime(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        Some("webmanifest") => "application/manifest+json",
        _ => "application/octet-stream",
    }
}
