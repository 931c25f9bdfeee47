//! The admin API's one route table: the router and the OpenAPI document are both built from it,
//! so a route cannot exist without being described — and the test that walks the document
//! (every route answers 401 without the token) cannot miss one.

use super::*;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{on, MethodFilter, MethodRouter};

/// One admin route: method, path (axum syntax, `{param}`), what it does, its handler. Other
/// crates (`fleet`) hand theirs to [`super::routes`]: the same guard, the same document.
pub struct Endpoint<S> {
    pub method: Method,
    pub path: &'static str,
    pub summary: &'static str,
    pub handler: MethodRouter<S>,
}

pub fn endpoint<S, H, T>(
    method: Method,
    path: &'static str,
    handler: H,
    summary: &'static str,
) -> Endpoint<S>
where
    S: Clone + Send + Sync + 'static,
    H: Handler<T, S>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone()).expect("a standard method");
    Endpoint {
        method,
        path,
        summary,
        handler: on(filter, handler),
    }
}

/// Every admin route; all of them need the bearer token (the OpenAPI document itself is public
/// and is not in this table).
pub(super) fn all<S>() -> Vec<Endpoint<S>>
where
    S: Clone + Send + Sync + 'static,
    Arc<Channels>: FromRef<S>,
{
    use Method as M;
    vec![
        endpoint(M::POST, "/api/v1/sources/{source}/uploads", upload::upload, "Upload a .deb (the raw body) to a local source (?suite=&component=, default: the source's first); the source's next sync lists it"),
        endpoint(M::POST, "/api/v1/sync", sync, "Sync one source ({\"source\": name}) or all; returns one outcome per source"),
        endpoint(M::GET, "/api/v1/snapshots", snapshots, "List snapshots, oldest first"),
        endpoint(M::GET, "/api/v1/snapshots/{id}", snapshot, "A snapshot with package counts per suite and index"),
        endpoint(M::GET, "/api/v1/snapshots/{a}/diff/{b}", diff, "Added, removed, upgraded, downgraded packages from a to b"),
        endpoint(M::POST, "/api/v1/snapshots/{id}/filter", filter, "New snapshot of the packages kept ({\"names\",\"sections\",\"priorities\",\"excludes\": globs/lists, \"name\"?})"),
        endpoint(M::POST, "/api/v1/snapshots/{id}/pull", pull, "New snapshot: base plus packages from another and the dependencies base lacks ({\"from\",\"packages\",\"name\"?})"),
        endpoint(M::POST, "/api/v1/snapshots/merge", merge, "New snapshot merging several; highest version wins ({\"snapshots\",\"into_suite\"?,\"name\"?})"),
        endpoint(M::POST, "/api/v1/channels/{channel}/publish", publish, "Point an entry channel (no promotes_from) at a snapshot ({\"snapshot\"})"),
        endpoint(M::POST, "/api/v1/channels/{channel}/auto-approve", auto_approve, "Apply the channel's auto-approval rule now; null when nothing qualifies"),
        endpoint(M::GET, "/api/v1/channels", channels_list, "Channels and where they point"),
        endpoint(M::POST, "/api/v1/channels", create_channel, "Create a channel ({\"name\", \"follows\"?, \"promotes_from\"?, \"min_soak\"?: \"72h\", \"selective\"?, \"auto_approve_after\"?, \"suites\"?})"),
        endpoint(M::POST, "/api/v1/keys/import", import_key, "Import an armored secret key without passphrase ({\"armored\"}); it signs from now on"),
        endpoint(M::GET, "/api/v1/channels/{channel}/history", history, "A channel's moves, newest first (?limit=)"),
        endpoint(M::GET, "/api/v1/channels/{channel}/holds", holds, "Held packages"),
        endpoint(M::POST, "/api/v1/channels/{channel}/holds", hold, "Hold a package ({\"package\", \"comment\"})"),
        endpoint(M::DELETE, "/api/v1/channels/{channel}/holds/{package}", unhold, "Release a hold (?comment=)"),
        endpoint(M::POST, "/api/v1/channels/{channel}/rollback", rollback, "Roll back ({\"to\"?: snapshot, \"comment\"?})"),
        endpoint(M::POST, "/api/v1/promote", promote, "Promote ({\"from\", \"to\", \"only\"?: [names], \"comment\"?})"),
        endpoint(M::GET, "/api/v1/audit", audit, "Audit log, newest first (?channel=&action=&since=&limit=)"),
        endpoint(M::GET, "/api/v1/audit/export", audit_export, "The whole audit log, oldest first, as JSON lines (application/x-ndjson; ?since=&after_id=)"),
        endpoint(M::GET, "/api/v1/keys", keys, "The armored public signing keys and their fingerprints"),
        endpoint(M::POST, "/api/v1/keys", add_key, "Add a signing key: both sign until the old one is retired; channels re-signed"),
        endpoint(M::POST, "/api/v1/keys/{fingerprint}/retire", retire_key, "Retire a key (not the last); channels re-signed"),
        endpoint(M::POST, "/api/v1/channels/{channel}/resign", resign, "Sign a channel's Release again (same indices)"),
        endpoint(M::GET, "/api/v1/channels/{channel}/verify", verify, "Where each package of the channel is: stored, only upstream, only at a fallback origin, or nowhere (HEAD requests)"),
        endpoint(M::POST, "/api/v1/gc", gc, "Garbage collection: delete snapshots past retention and unreferenced blobs older than the grace period ({\"dry_run\"?: bool})"),
        endpoint(M::GET, "/api/v1/store/usage", store_usage, "Store contents by kind: packages, indices, metadata, unreferenced"),
    ]
}

/// The OpenAPI 3.1 description of the admin API, from the route table.
pub fn openapi_document() -> Value {
    openapi_document_with(&[])
}

/// The OpenAPI document of this crate's routes and `extra` ones: `(method, path, summary)`.
pub fn openapi_document_with(extra: &[(Method, &'static str, &'static str)]) -> Value {
    let error = json!({"$ref": "#/components/schemas/Error"});
    let mut paths = serde_json::Map::new();
    let own = all::<Arc<Channels>>()
        .into_iter()
        .map(|e| (e.method, e.path, e.summary));
    for (method, path, summary) in own.chain(extra.iter().cloned()) {
        let operation = json!({
            "summary": summary,
            "security": [{"bearer": []}],
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {}}},
                "401": {"description": "missing or wrong bearer token", "content": {"application/json": {"schema": error}}},
                "default": {"description": "error", "content": {"application/json": {"schema": error}}}
            }
        });
        let path = paths.entry(path).or_insert_with(|| json!({}));
        path[method.as_str().to_ascii_lowercase()] = operation;
    }
    paths.insert(
        "/api/v1/openapi.json".to_owned(),
        json!({"get": {"summary": "This document (no token needed)", "responses": {"200": {"description": "OK"}}}}),
    );
    json!({
        "openapi": "3.1.0",
        "info": {"title": "aptgate admin API", "version": "1"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {"type": "object", "required": ["code", "message"], "properties": {
                "code": {"type": "string", "description": "stable: unauthorized, bad_request, unknown_channel, unknown_snapshot, snapshot_deleted, unknown_source, unknown_key, bad_key, unpublished, refused, conflict, bad_upload, upload_conflict, upload_too_large, upstream, fetch_failed, bad_index, catalog, storage, signing"},
                "message": {"type": "string"}}}}
        },
        "paths": paths
    })
}
