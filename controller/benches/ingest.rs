//! Ingest benchmark (placeholder until the ingest exists).
fn main() {}
