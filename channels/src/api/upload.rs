//! `POST /api/v1/sources/{source}/uploads`: a `.deb` as the raw request body, streamed to the
//! store (never held in memory); `?suite=&component=` choose where in the local source it goes.

use super::*;
use crate::UploadTarget;
use axum::body::Body;

pub(super) async fn upload(
    State(channels): State<Arc<Channels>>,
    headers: HeaderMap,
    Path(source): Path<String>,
    Query(target): Query<UploadTarget>,
    body: Body,
) -> ApiResult {
    let actor = authorize(&channels, &headers, None)?;
    let outcome = channels
        .upload(&source, &target, body.into_data_stream(), &actor)
        .await?;
    to_json(&outcome)
}
