//! `kiln models …`: list and fetch the released models (GGUF) of kiln-data's catalogue.
//! Parsing and printing only: the catalogue and the fetch live in `kiln_data::models`.

use std::path::PathBuf;

use clap::Subcommand;
use kiln_data::models;

#[derive(Subcommand)]
pub enum ModelsCommand {
    /// Download a released model into the data folder (idempotent, sha256-pinned).
    Fetch {
        /// Catalogue names (`kiln models list`).
        #[arg(required = true)]
        names: Vec<String>,
        /// Data folder (default: $KILN_DATA_DIR, else ./data of the kiln checkout).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The catalogue, with where each model is (or would be) on disk.
    List {
        /// Data folder (default: $KILN_DATA_DIR, else ./data of the kiln checkout).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

pub fn run(c: ModelsCommand) -> anyhow::Result<()> {
    match c {
        ModelsCommand::Fetch { names, dir } => {
            let dir = dir.unwrap_or_else(kiln_data::fetch::data_dir);
            for name in &names {
                let path = models::fetch_model(&dir, name)?;
                println!("{name}\t{}", path.display());
            }
        }
        ModelsCommand::List { dir } => {
            let dir = dir.unwrap_or_else(kiln_data::fetch::data_dir);
            for m in models::MODELS {
                let path = models::model_path_in(&dir, m);
                let state = if path.is_file() {
                    "fetched"
                } else {
                    "not fetched"
                };
                println!("{}\t{}\t{state}\t{}", m.name, m.about, path.display());
            }
        }
    }
    Ok(())
}
