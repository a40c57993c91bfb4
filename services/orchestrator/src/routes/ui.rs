//! `GET /ui`: the dashboard, one self-contained page (inline style and script, nothing fetched
//! from elsewhere, no build step).
//!
//! The page itself holds no data and needs no token: its script reads `/stats` every 2 s and
//! calls `/tasks/{id}`, `/tasks/{id}/retry` and `/priorities/{p}/pause|resume` like any other
//! client, so with `AUTH_TOKENS` set every number and action still requires a valid bearer
//! token. On a 401 the page asks for the token once and keeps it in the tab's `sessionStorage`
//! (never in a URL, a cookie or a log). The queue-depth sparklines are the page's own history
//! of the last 60 samples (two minutes), kept in the tab.

use axum::http::header;
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("ui.html");

/// `GET /ui`.
pub async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            // Only this page's own inline code, and requests to this origin.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src 'self' data:; form-action 'none'; \
                 frame-ancestors 'none'; base-uri 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        PAGE,
    )
        .into_response()
}
