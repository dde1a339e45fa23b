//! `nudge merge`: PEFT adapters combined with weights into one adapter of a chosen rank
//! through the SVD of the summed update (also a rank shrink, with one adapter). Needs the
//! `linalg` cargo feature (LAPACK); without it the command says so.

use clap::Args;
use nudge::Result;
use std::path::PathBuf;

#[derive(Args)]
// Without `linalg` the arguments are parsed (so `--help` is the same) but never read.
#[cfg_attr(not(feature = "linalg"), allow(dead_code))]
pub struct MergeArgs {
    /// The base model the adapters were trained on (checks their shapes).
    #[arg(short, long)]
    model: PathBuf,
    /// Comma-separated DIR:WEIGHT pairs, e.g. a:0.7,b:0.3 (weights may be negative).
    #[arg(long)]
    adapters: String,
    /// Rank of the result (default: the largest input rank).
    #[arg(long)]
    rank: Option<usize>,
    /// Clamp the factors to this quantile of their values (PEFT's svd_clamp; default off).
    #[arg(long)]
    clamp: Option<f32>,
    /// Output folder (PEFT format).
    #[arg(short, long)]
    out: PathBuf,
}

#[cfg(not(feature = "linalg"))]
pub fn merge_command(_a: MergeArgs) -> Result<()> {
    Err(nudge::Error::invalid(
        "`nudge merge` needs LAPACK: this binary was built without the `linalg` feature \
         (rebuild with `cargo build --release --features linalg`, which links the system's OpenBLAS)",
    ))
}

/// The adapters of `spec` (`DIR:WEIGHT,...`) combined by the SVD of their summed update at
/// `rank`, for a model of configuration `cfg` (`nudge merge` and `nudge export --merge`).
#[cfg(feature = "linalg")]
pub fn merged_adapter(
    cfg: &nudge::model::config::Config,
    spec: &str,
    rank: Option<usize>,
    clamp: Option<f32>,
) -> Result<nudge::adapter::linalg::Merged> {
    use nudge::adapter::linalg::{SvdOptions, Weighted, merge_svd};
    let list = parse_adapters(spec)?;
    let mut loaded = Vec::with_capacity(list.len());
    for (dir, w) in &list {
        loaded.push((dir.display().to_string(), nudge::adapter::load(dir, cfg)?, *w));
    }
    let inputs: Vec<Weighted> = loaded
        .iter()
        .map(|(name, adapter, weight)| Weighted {
            name,
            adapter,
            weight: *weight,
        })
        .collect();
    merge_svd(&inputs, &SvdOptions { rank, clamp })
}

#[cfg(feature = "linalg")]
pub fn merge_command(a: MergeArgs) -> Result<()> {
    use nudge::adapter::format::peft;

    let model = crate::args::open_model(&a.model)?;
    let merged = merged_adapter(&model.config, &a.adapters, a.rank, a.clamp)?;
    peft::save(&merged.adapter, &a.out)?;
    eprintln!(
        "nudge: adapters merged at rank {} over {} projections; {:.4}% of the update's energy kept; adapter in {}",
        merged.adapter.config.r,
        merged.spectra.len(),
        100.0 * merged.kept_energy_fraction(),
        a.out.display()
    );
    Ok(())
}

/// `a:0.7,b:0.3` → [(a, 0.7), (b, 0.3)]; the weight follows the last colon of each item.
#[cfg(feature = "linalg")]
fn parse_adapters(s: &str) -> Result<Vec<(PathBuf, f32)>> {
    use nudge::Error;
    let mut v = Vec::new();
    for item in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
        let (dir, w) = item
            .rsplit_once(':')
            .ok_or_else(|| Error::invalid(format!("--adapters item `{item}` is not DIR:WEIGHT")))?;
        let w: f32 = w
            .trim()
            .parse()
            .map_err(|_| Error::invalid(format!("--adapters item `{item}`: `{w}` is not a number")))?;
        v.push((PathBuf::from(dir), w));
    }
    if v.is_empty() {
        return Err(Error::invalid("--adapters names no adapter"));
    }
    Ok(v)
}
