//! `kfm infra check`: wiring the gate's library to files and exit codes.

use kfm_infra::{Options, render};

use crate::cli::{Format, InfraCommand};
use crate::failure::{EXIT_RULE, Failure};

pub fn run(cmd: &InfraCommand, fmt: Format) -> Result<u8, Failure> {
    let InfraCommand::Check(a) = cmd;
    // Every --output is checked before anything is read or written.
    let mut outputs = Vec::new();
    for o in &a.outputs {
        let (f, path) = o.split_once('=').ok_or_else(|| {
            Failure::input(format!("--output {o}: expected FORMAT=PATH"))
                .hint("for example --output sarif=infra.sarif")
        })?;
        let f: kfm_infra::Format = f
            .parse()
            .map_err(|e: String| Failure::input(format!("--output {o}: {e}")))?;
        outputs.push((f, std::path::PathBuf::from(path)));
    }
    let extra_rules = match &a.rules {
        None => Vec::new(),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| Failure::input(format!("cannot read {}: {e}", p.display())))?;
            kfm_infra::secrets::gitleaks_rules(&text, &p.display().to_string())
                .map_err(|e| Failure::input(e.to_string()))?
        }
    };
    let report = kfm_infra::check(&a.paths, Options { extra_rules })
        .map_err(|e| Failure::input(e.to_string()))?;
    for (f, path) in &outputs {
        std::fs::write(path, render(&report, *f))
            .map_err(|e| Failure::input(format!("cannot write {}: {e}", path.display())))?;
    }
    let stdout = match fmt {
        Format::Human => kfm_infra::Format::Human,
        Format::Json => kfm_infra::Format::Json,
    };
    print!("{}", render(&report, stdout));
    Ok(if report.findings.is_empty() {
        0
    } else {
        EXIT_RULE
    })
}
