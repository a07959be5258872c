//! The application's token settings in Kinde (`updateApplicationTokens`): applied when the
//! spec asks for a lifetime that is not known to be in place (see
//! [`token_lifetime_to_apply`] for how that is known).

use super::decide::{KindeApp, token_lifetime_to_apply};
use crate::controller::kernel::{Error, Result, record_change};
use crate::controller::world::Ctx;
use crate::crd::{AppliedTokens, M2MApplication, M2MApplicationStatus};

/// Applies `spec.tokens.accessTokenLifetime` to `app` if needed and records it in
/// `status.appliedTokens`; returns whether it changed Kinde. Runs before the Secret is written, so a rotation's successor
/// has its lifetime before any consumer holds its credentials.
pub(super) async fn ensure_tokens(
    obj: &M2MApplication,
    ctx: &Ctx,
    status: &mut M2MApplicationStatus,
    app: &KindeApp,
) -> Result<bool> {
    // Checked by `validate` before any Kinde write.
    let desired = match &obj.spec.tokens {
        Some(tokens) => tokens
            .access_token_lifetime()
            .map_err(|e| Error::InvalidSpec(format!("{e:#}")))?,
        None => None,
    };
    let Some(seconds) = desired else {
        // Removing the field leaves Kinde's setting as it is; nothing is tracked.
        status.applied_tokens = None;
        return Ok(false);
    };
    let apply = token_lifetime_to_apply(Some(seconds), app, status.applied_tokens.as_ref());
    if let Some(apply) = apply {
        ctx.business
            .kinde
            .update_application_tokens(&app.id, apply)
            .await?;
        record_change(
            ctx,
            obj,
            "TokensUpdated",
            format!(
                "Kinde application {} now issues access tokens valid for {apply} s",
                app.id
            ),
        )
        .await;
    }
    status.applied_tokens = Some(AppliedTokens {
        application_id: app.id.clone(),
        access_token_lifetime_seconds: seconds,
    });
    Ok(apply.is_some())
}
