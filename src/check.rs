//! `kinde-m2m-operator check`: do the operator's Kinde credentials work, and do they carry
//! every management scope it needs? Fetches a management token, reads which scopes it
//! carries, probes the read scopes with a read (a write cannot be probed without changing
//! something), prints one line per scope and fails when a needed one is missing: usable
//! as an init container or a CI step before the operator starts.

use std::collections::BTreeMap;

use anyhow::bail;
use clap::Args;

use crate::kinde::{KindeClient, KindeError, KindeMetrics, Operation};
use crate::run::KindeArgs;

/// Options of `kinde-m2m-operator check`.
#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    #[command(flatten)]
    pub kinde: KindeArgs,
}

/// What is known of one scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// A read call that needs it was answered.
    Probed(&'static str),
    /// The token carries it (writes are not probed).
    InToken,
    /// A read call that needs it was refused although the token carries it.
    Refused(&'static str),
    Missing,
    /// The token lists no scopes and nothing probed it.
    Unknown,
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub scope: &'static str,
    /// Operations that need it.
    pub operations: Vec<&'static str>,
    /// Set when only this feature needs the scope: its absence does not fail the check.
    pub only_for: Option<&'static str>,
    pub finding: Finding,
}

impl Row {
    fn fails(&self) -> bool {
        self.only_for.is_none() && !self.present()
    }

    fn present(&self) -> bool {
        matches!(self.finding, Finding::Probed(_) | Finding::InToken)
    }
}

/// The outcome of a read probe: `Ok`, refused for a missing scope, or failed otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    Answered,
    Forbidden,
}

/// Decides each scope's finding from the token's scopes and the probes (by operation name).
pub fn assess(token: Option<&[String]>, probes: &BTreeMap<&'static str, Probe>) -> Vec<Row> {
    let mut rows: BTreeMap<&'static str, Row> = BTreeMap::new();
    for op in Operation::ALL {
        let scope = op.scope();
        if scope.is_empty() {
            continue;
        }
        let row = rows.entry(scope).or_insert_with(|| Row {
            scope,
            operations: Vec::new(),
            only_for: op.only_for(),
            finding: Finding::Unknown,
        });
        row.operations.push(op.name());
        // A scope another operation needs without a feature condition is needed outright.
        if op.only_for().is_none() {
            row.only_for = None;
        }
    }
    for row in rows.values_mut() {
        let in_token = token.map(|t| t.iter().any(|s| s == row.scope));
        let probe = row
            .operations
            .iter()
            .find_map(|op| probes.get(op).map(|p| (*op, p)));
        row.finding = match (probe, in_token) {
            (Some((op, Probe::Answered)), _) => Finding::Probed(op),
            (Some((op, Probe::Forbidden)), Some(true)) => Finding::Refused(op),
            (Some((_, Probe::Forbidden)), _) => Finding::Missing,
            (None, Some(true)) => Finding::InToken,
            (None, Some(false)) => Finding::Missing,
            (None, None) => Finding::Unknown,
        };
    }
    rows.into_values().collect()
}

/// The report as printed, one scope a line.
pub fn render(rows: &[Row]) -> String {
    let mut out = String::new();
    for row in rows {
        let result = match &row.finding {
            Finding::Probed(op) => format!("ok (probed with {op})"),
            Finding::InToken => "ok (in the token)".to_owned(),
            Finding::Refused(op) => format!("REFUSED by {op} although in the token"),
            Finding::Missing => "MISSING".to_owned(),
            Finding::Unknown => "UNKNOWN (the token lists no scopes)".to_owned(),
        };
        let note = match row.only_for {
            Some(feature) if !row.present() => format!("  (only {feature} needs it)"),
            _ => String::new(),
        };
        out.push_str(&format!("{:<32} {result}{note}\n", row.scope));
    }
    out
}

/// Runs the check; `Err` (naming what is wrong) when the credentials fail or a needed scope
/// is missing.
pub async fn run(args: CheckArgs) -> anyhow::Result<()> {
    let config = args.kinde.config()?;
    let client = KindeClient::new(config, KindeMetrics::default())?;
    println!("Kinde domain:       {}", client.domain());
    println!("management client:  {}", client.management_client_id());
    let token = match client.management_token_scopes().await {
        Ok(scopes) => scopes,
        Err(e @ KindeError::Unauthorized { .. }) => bail!(
            "no management token: {e} (check --kinde-client-id / --kinde-client-secret, and that the application is authorized for the Kinde Management API)"
        ),
        Err(e) => bail!(
            "no management token from {}: {e} (check --kinde-domain)",
            client.token_url()
        ),
    };
    println!(
        "management token:   obtained{}",
        if token.is_some() {
            ""
        } else {
            " (it lists no scopes)"
        }
    );
    let probes = probe(&client).await?;
    let rows = assess(token.as_deref(), &probes);
    print!("\n{}", render(&rows));
    let failing: Vec<&str> = rows.iter().filter(|r| r.fails()).map(|r| r.scope).collect();
    if !failing.is_empty() {
        bail!(
            "the management client lacks {}: grant {} to it on the Kinde Management API (Settings > APIs > Kinde Management API > Applications)",
            failing.join(", "),
            if failing.len() == 1 { "it" } else { "them" }
        );
    }
    println!("\nall needed scopes present");
    Ok(())
}

/// Read-only probes: one page of applications, the APIs, one API's scopes. A 403 is a
/// finding; any other failure ends the check (Kinde unreachable, throttling).
async fn probe(client: &KindeClient) -> anyhow::Result<BTreeMap<&'static str, Probe>> {
    fn outcome(r: Result<(), KindeError>) -> anyhow::Result<Probe> {
        match r {
            Ok(()) => Ok(Probe::Answered),
            Err(KindeError::Forbidden { .. }) => Ok(Probe::Forbidden),
            Err(e) => Err(e.into()),
        }
    }
    let mut probes = BTreeMap::new();
    probes.insert(
        Operation::ListApplications.name(),
        outcome(client.probe_list_applications().await)?,
    );
    let apis = client.list_apis(false).await;
    let first_api = apis
        .as_ref()
        .ok()
        .and_then(|apis| apis.first().map(|a| a.id.clone()));
    probes.insert(Operation::ListApis.name(), outcome(apis.map(drop))?);
    // The Kinde Management API itself is always there to read scopes from.
    if let Some(api) = first_api {
        probes.insert(
            Operation::ListApiScopes.name(),
            outcome(client.list_api_scopes(&api).await.map(drop))?,
        );
    }
    Ok(probes)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn all_but(missing: &[&str]) -> Vec<String> {
        Operation::required_scopes()
            .into_iter()
            .filter(|s| !missing.contains(s))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn every_scope_is_found_once_and_writes_come_from_the_token() {
        let probes = BTreeMap::from([
            ("getApplications", Probe::Answered),
            ("getAPIs", Probe::Answered),
            ("getAPIScopes", Probe::Answered),
        ]);
        let rows = assess(Some(&all_but(&[])), &probes);
        assert_eq!(rows.len(), Operation::required_scopes().len());
        assert!(rows.iter().all(|r| !r.fails()), "{rows:?}");
        let read = rows
            .iter()
            .find(|r| r.scope == "read:applications")
            .expect("row");
        assert_eq!(read.finding, Finding::Probed("getApplications"));
        let create = rows.iter().find(|r| r.scope == "create:apis").expect("row");
        assert_eq!(create.finding, Finding::InToken);
    }

    #[test]
    fn missing_scopes_fail_unless_only_a_feature_needs_them() {
        let probes = BTreeMap::from([
            ("getApplications", Probe::Forbidden),
            ("getAPIs", Probe::Answered),
        ]);
        let token = all_but(&[
            "read:applications",
            "delete:apis",
            "update:application_tokens",
        ]);
        let rows = assess(Some(&token), &probes);
        let failing: Vec<&str> = rows.iter().filter(|r| r.fails()).map(|r| r.scope).collect();
        assert_eq!(failing, ["delete:apis", "read:applications"]);
        let tokens = rows
            .iter()
            .find(|r| r.scope == "update:application_tokens")
            .expect("row");
        assert_eq!(tokens.finding, Finding::Missing);
        assert_eq!(tokens.only_for, Some("spec.tokens"));
        let text = render(&rows);
        assert!(
            text.contains("delete:apis") && text.contains("MISSING"),
            "{text}"
        );
        assert!(text.contains("only spec.tokens needs it"), "{text}");
    }

    #[test]
    fn a_refusal_despite_the_token_and_a_token_without_scopes_are_told() {
        let probes = BTreeMap::from([("getAPIs", Probe::Forbidden)]);
        let rows = assess(Some(&all_but(&[])), &probes);
        let apis = rows.iter().find(|r| r.scope == "read:apis").expect("row");
        assert_eq!(apis.finding, Finding::Refused("getAPIs"));
        assert!(apis.fails());
        let rows = assess(None, &BTreeMap::new());
        assert!(rows.iter().all(|r| r.finding == Finding::Unknown));
        let needed = Operation::needed_scopes();
        assert!(needed.contains("delete:api_application_scopes"));
        assert!(!needed.contains("update:application_tokens"));
        // The report fails on exactly the scopes a connection must carry to be Ready.
        let failing: BTreeSet<&str> = assess(None, &BTreeMap::new())
            .into_iter()
            .filter(|r| r.only_for.is_none())
            .map(|r| r.scope)
            .collect();
        assert_eq!(failing, needed);
    }
}
