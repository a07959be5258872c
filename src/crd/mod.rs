//! Custom resource definitions (placeholder until the CRD types land).

/// Every CRD of the operator as one multi-document YAML stream.
pub fn crds_yaml() -> anyhow::Result<String> {
    anyhow::bail!("no CRDs yet")
}
