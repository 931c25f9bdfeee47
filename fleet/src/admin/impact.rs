//! `POST /api/v1/fleet/impact`: what a move would do, changing nothing (no move, no stored
//! snapshot, no audit entry).

use super::*;
use aptgate_channels::PromoteRequest;
use axum::extract::State;
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ImpactBody {
    channel: Option<String>,
    snapshot: Option<String>,
    promote: Option<PromoteRequest>,
}

pub(super) async fn impact(
    State(fleet): State<Arc<Fleet>>,
    headers: HeaderMap,
    Json(body): Json<ImpactBody>,
) -> ApiResult {
    actor(&fleet, &headers, None)?;
    let plan = match body {
        ImpactBody {
            promote: Some(req),
            channel: None,
            snapshot: None,
        } => fleet.channels.plan_promotion(&req).await,
        ImpactBody {
            promote: None,
            channel: Some(channel),
            snapshot: Some(snapshot),
        } => fleet.channels.plan_move(&channel, &snapshot).await,
        _ => {
            return Err(FleetError::bad_request(
                "bad_request",
                "name a move: {\"channel\", \"snapshot\"} or {\"promote\": {\"from\", \"to\", \
                 \"only\"?}}",
            )
            .into())
        }
    }
    .map_err(FleetError::from)?;
    let impact = fleet.impact(&plan).await?;
    Ok(Json(json!({"plan": plan, "impact": impact})))
}
