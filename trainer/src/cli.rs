//! Command line of the trainer.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fcdnode_trainer::data::bids::{Dataset, Group, ImageKind};

/// fcdtrain: retrain fcdnode models offline on BIDS NIfTI data (e.g. the Bonn FCD-II dataset).
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read a BIDS dataset (ds004199 layout) and summarise it: subjects per group and
    /// acquisition, images per modality, and every glitch found.
    Dataset {
        /// Dataset root (holds participants.tsv).
        #[arg(long)]
        data: PathBuf,
        /// Print the whole dataset as JSON instead of a summary.
        #[arg(long)]
        json: bool,
    },
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dataset { data, json } => {
            let d = Dataset::open(&data).with_context(|| format!("reading dataset {}", data.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
                return Ok(());
            }
            let count = |g: Group| d.subjects.iter().filter(|s| s.group == g).count();
            println!(
                "{}: {} subjects ({} fcd, {} hc)",
                data.display(),
                d.subjects.len(),
                count(Group::Fcd),
                count(Group::Hc)
            );
            for kind in [ImageKind::T1w, ImageKind::Flair, ImageKind::FlairRoi] {
                let n: usize = d.subjects.iter().map(|s| s.images_of(kind).count()).sum();
                println!("  {kind:?}: {n} images");
            }
            for w in &d.warnings {
                println!("warning: {w}");
            }
            Ok(())
        }
    }
}
