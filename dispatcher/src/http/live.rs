//! `GET /api/events`: every job change as a server-sent event, for the
//! dashboard's live pages. Fed by the event bus; ends when the dispatcher
//! stops, so an open tab never holds up a shutdown.

use std::convert::Infallible;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use model::api::JobView;
use tokio::sync::broadcast::error::RecvError;

use super::AppState;

/// One `job` event per change (the job as the API shows it), or `reload`
/// when this client fell too far behind to be told every change. The
/// stream is polled by the client's connection: no task of its own.
pub async fn events(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let feed = state.bus().watch();
    let stream = futures::stream::unfold(feed, |mut feed| async move {
        let event = match feed.recv().await {
            Ok(event) => {
                let data = serde_json::to_string(&JobView::from(event.job)).unwrap_or_default();
                SseEvent::default().event("job").data(data)
            }
            Err(RecvError::Lagged(_)) => SseEvent::default().event("reload").data("{}"),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(event), feed))
    })
    .take_until(state.stopping.clone().cancelled_owned());
    Sse::new(stream).keep_alive(KeepAlive::default())
}
