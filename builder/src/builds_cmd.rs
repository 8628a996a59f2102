//! `kiln builds ls|inspect|rm`: the build records of the store (see
//! `kiln_builder::explain`).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, anyhow};
use kiln_cache::{BuildRecord, StepStatus, Store};

/// `2 minutes ago`, as `docker ps` says it.
fn ago(ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let secs = now.saturating_sub(ms) / 1000;
    match secs {
        0..=59 => format!("{secs} seconds ago"),
        60..=3599 => format!("{} minutes ago", secs / 60),
        3600..=86399 => format!("{} hours ago", secs / 3600),
        _ => format!("{} days ago", secs / 86400),
    }
}

fn target_and_tags(r: &BuildRecord) -> String {
    let mut parts = Vec::new();
    if let Some(t) = &r.target {
        parts.push(format!("--target {t}"));
    }
    parts.extend(r.tags.iter().cloned());
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(", ")
    }
}

/// `kiln builds ls`.
pub fn ls(root: &Path, quiet: bool) -> Result<ExitCode> {
    let store = Store::open(root)?;
    let records = store.records_newest_first()?;
    if quiet {
        for r in &records {
            println!("{}", r.id);
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<17}   {:<18}   {:<10}   {:<11}   {:<5}   {:<6}   TARGET/TAGS",
        "ID", "STARTED", "DURATION", "STATUS", "STEPS", "CACHED"
    );
    for r in &records {
        let cached = r
            .steps
            .iter()
            .filter(|s| s.status == Some(StepStatus::Cached))
            .count();
        let status = r.status.map(|s| s.as_str()).unwrap_or("running");
        println!(
            "{:<17}   {:<18}   {:<10}   {:<11}   {:<5}   {:<6}   {}",
            r.id,
            ago(r.started_ms),
            format!(
                "{:.2}s",
                r.ended_ms.saturating_sub(r.started_ms) as f64 / 1000.0
            ),
            status,
            r.steps.len(),
            cached,
            target_and_tags(r)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn find(store: &Store, id: &str) -> Result<BuildRecord> {
    let full = store
        .record_resolve(id)?
        .ok_or_else(|| anyhow!("no such build record: {id}"))?;
    store
        .record_get(&full)?
        .ok_or_else(|| anyhow!("no such build record: {id}"))
}

/// `kiln builds inspect ID [--format json]`.
pub fn inspect(root: &Path, id: &str, json: bool) -> Result<ExitCode> {
    let store = Store::open(root)?;
    let r = find(&store, id)?;
    if json {
        let r = store.record_export(&r.id)?.unwrap_or(r);
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("ID:         {}", r.id);
    println!(
        "Status:     {}{}",
        r.status.map(|s| s.as_str()).unwrap_or("running"),
        r.error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    );
    println!("Started:    {}", ago(r.started_ms));
    println!(
        "Duration:   {:.2}s",
        r.ended_ms.saturating_sub(r.started_ms) as f64 / 1000.0
    );
    println!("Dockerfile: {} ({})", r.dockerfile, r.dockerfile_digest);
    println!("Context:    {}", r.context);
    println!("Platform:   {}", r.platform);
    println!("Target:     {}", target_and_tags(&r));
    for (k, v) in &r.build_args {
        println!("Build arg:  {k}={v}");
    }
    for o in &r.outputs {
        println!("Output:     {o}");
    }
    if let Some(i) = &r.image {
        println!("Image:      {i}");
    }
    let (own, files) = store.record_size(&r.id)?;
    println!("Record:     {own} bytes (+ {files} bytes of file sets)");
    println!("Steps:");
    for s in &r.steps {
        let status = match s.status {
            Some(StepStatus::Cached) => match &s.source {
                Some(kiln_cache::HitSource::Store { build: Some(b) }) => {
                    format!("CACHED (build {b})")
                }
                Some(kiln_cache::HitSource::Registry { reference }) => {
                    format!("CACHED (registry cache {reference})")
                }
                _ => "CACHED".to_string(),
            },
            Some(StepStatus::Built) => format!("DONE {:.1}s", s.duration_ms as f64 / 1000.0),
            Some(StepStatus::Failed) => "ERROR".to_string(),
            Some(StepStatus::Cancelled) => "CANCELED".to_string(),
            None => "not run".to_string(),
        };
        println!("  #{} {} {status}", s.number, s.name);
        if let Some(m) = &s.miss {
            println!("     MISS: {}", m.details);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `kiln builds rm ID...|--all`.
pub fn rm(root: &Path, ids: &[String], all: bool) -> Result<ExitCode> {
    let store = Store::open(root)?;
    let _lock = store.lock_shared()?;
    let ids: Vec<String> = if all {
        store.record_ids()?
    } else {
        ids.to_vec()
    };
    let mut failed = false;
    for id in &ids {
        match store.record_resolve(id)? {
            Some(full) if store.record_remove(&full)? => println!("{full}"),
            _ => {
                eprintln!("error: no such build record: {id}");
                failed = true;
            }
        }
    }
    // Asked for: the file sets no record needs go now.
    store.filesets_trim(std::time::Duration::ZERO)?;
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
