//! The OpenAPI document (utoipa), printed by `editd print-openapi` and committed as
//! `openapi.json` (a test fails when the two drift).

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::error::{ErrorBody, ErrorItem};
use super::wire::*;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let comps = doc.components.get_or_insert_with(Default::default);
        comps.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "editd",
        description = "Local inference server for open image-edit models with a Runflow-compatible run API. \
                       Errors are always `{code, message, errors}` with Content-Type application/json."
    ),
    paths(
        super::runs::create_run,
        super::runs::get_run,
        super::runs::list_runs,
        super::runs::cancel_run,
        super::openai::images_edits,
        super::callbacks::history,
        super::callbacks::redeliver,
        super::callbacks::create_secret,
        super::callbacks::list_secrets,
        super::callbacks::delete_secret,
        super::assets::create_upload,
        super::assets::put_upload,
        super::assets::confirm_upload,
        super::assets::get_asset,
        super::assets::get_output,
        super::health::health,
        super::health::readiness,
        super::health::me,
    ),
    components(schemas(
        ErrorBody, ErrorItem, CreateRunRequest, EditInput, RunObject, RunOutputWire, OutputEntry,
        RunErrorWire, ProgressWire, RunList, AssetUploadRequest, AssetUploadResponse, AssetObject,
        HealthBody, ReadinessBody, MeBody, UploadedBody,
        super::callbacks::CallbackSecretObject, super::callbacks::CallbackSecretList,
        super::callbacks::CallbackAttemptObject, super::callbacks::CallbackDeliveryObject,
        super::callbacks::CallbackHistory
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "runs", description = "Create, poll, list and cancel edit runs"),
        (name = "openai", description = "OpenAI-compatible image edits (multipart), served through the same run queue"),
        (name = "assets", description = "Upload input images"),
        (name = "callbacks", description = "Signed callbacks: secrets, delivery history, redelivery"),
        (name = "health", description = "Probes and key check"),
    )
)]
struct ApiDoc;

/// The OpenAPI document as pretty JSON (with a trailing newline).
pub fn openapi_json() -> String {
    let mut s = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serialises");
    s.push('\n');
    s
}
