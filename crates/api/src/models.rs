//! `GET /v1/models` and `GET /v1/models/{id}` in OpenAI's shape (`object:
//! "list"` of `{id, object: "model", created, owned_by}`), with videogen's
//! extension `videogen`: what the model makes (sizes, durations, knobs),
//! what it supports, and where the fleet stands with it (workers warm,
//! cold, unavailable with why, the weights hash), as the scheduler leader's
//! fleet view sees it. Aliases are listed too, each naming what it is an
//! alias of, so `models.retrieve("sora-2")` works.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};
use videogen_core::catalog::ModelCard;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

pub async fn list(State(state): State<AppState>, _caller: Caller) -> ApiResult<Json<Value>> {
    let fleet = fleet_view(&state);
    let mut data = Vec::new();
    for card in state.catalog.cards() {
        data.push(render(card, &card.id, &fleet));
        for alias in &card.aliases {
            data.push(render(card, alias, &fleet));
        }
    }
    Ok(Json(json!({"object": "list", "data": data})))
}

pub async fn retrieve(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let card = state.catalog.get(&id).ok_or_else(|| ApiError::model_not_found(&id))?;
    Ok(Json(render(card, &id, &fleet_view(&state))))
}

type FleetView = std::collections::BTreeMap<String, videogen_control::FleetModel>;

fn fleet_view(state: &AppState) -> FleetView {
    state
        .fleet
        .as_ref()
        .map(|f| f.models(state.clock.now_ms()))
        .unwrap_or_default()
}

fn render(card: &ModelCard, name: &str, fleet: &FleetView) -> Value {
    let f = fleet.get(&card.id).cloned().unwrap_or_default();
    let unavailable: Vec<Value> = f
        .unavailable
        .iter()
        .map(|(worker, error)| json!({"worker": worker, "error": error}))
        .collect();
    json!({
        "id": name,
        "object": "model",
        "created": card.created,
        "owned_by": card.owned_by,
        "videogen": {
            "alias_of": (name != card.id).then_some(&card.id),
            "aliases": card.aliases,
            "sizes": card.sizes.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "seconds": card.durations.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "fps": card.fps,
            "num_inference_steps": card.steps,
            "guidance_scale": card.guidance,
            "supports": {
                "negative_prompt": card.negative_prompt,
                "input_reference": card.image_to_video,
                "audio": card.audio,
                "styles": card.styles.keys().collect::<Vec<_>>(),
            },
            "workers": {
                "warm": f.warm,
                "cold": f.cold,
                "unavailable": unavailable,
            },
            // Some worker that asked for work recently can run it.
            "available": !f.warm.is_empty() || !f.cold.is_empty(),
            "weights_hash": f.weights_hash,
        }
    })
}
