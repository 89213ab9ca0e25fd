//! Finding a workspace and opening what it configures.

use std::path::{Path, PathBuf};

use kfm_core::Config;
use kfm_ledger::{Guards, Ledger, LedgerError, LedgerOptions, LedgerSigner, LedgerView};
use kfm_store::Store;

use crate::failure::Failure;

pub const CONFIG_FILE: &str = "kfm.toml";

/// An opened workspace: its directory and effective configuration.
pub struct Workspace {
    pub dir: PathBuf,
    pub config: Config,
}

impl Workspace {
    /// The workspace named by `--workspace`/`KFM_WORKSPACE`, or the nearest
    /// directory from the current one upward that holds kfm.toml.
    pub fn find(explicit: Option<&Path>) -> Result<Self, Failure> {
        let dir = match explicit {
            Some(d) => {
                if !d.join(CONFIG_FILE).is_file() {
                    return Err(Failure::input(format!(
                        "{} is not a KFM workspace (no {CONFIG_FILE})",
                        d.display()
                    ))
                    .hint(format!("create one with `kfm init {}`", d.display())));
                }
                d.to_path_buf()
            }
            None => {
                let cwd = std::env::current_dir().map_err(|e| {
                    Failure::input(format!("cannot read the current directory: {e}"))
                })?;
                cwd.ancestors()
                    .find(|d| d.join(CONFIG_FILE).is_file())
                    .map(Path::to_path_buf)
                    .ok_or_else(|| {
                        Failure::input(format!(
                            "no KFM workspace here: no {CONFIG_FILE} in {} or any parent",
                            cwd.display()
                        ))
                        .hint("run `kfm init`, or pass --workspace DIR")
                    })?
            }
        };
        Self::open(&dir)
    }

    /// Loads `dir/kfm.toml` with environment overrides.
    pub fn open(dir: &Path) -> Result<Self, Failure> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Failure::input(format!("cannot read {}: {e}", path.display())))?;
        let config = Config::parse(&text, &path.display().to_string(), |k| {
            std::env::var(k).ok()
        })
        .map_err(|e| Failure::input(e.to_string()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
        })
    }

    /// Opens the canonical store this workspace points at.
    pub fn store(&self) -> Result<Store, Failure> {
        let url = self.config.store_url.resolved(&self.dir);
        Store::open(&url, |k| std::env::var(k).ok()).map_err(Failure::from)
    }

    pub fn datasets_dir(&self) -> PathBuf {
        self.dir.join("datasets")
    }

    /// Where this workspace's ledger writers keep the witnessed checkpoint.
    pub fn witness_path(&self) -> PathBuf {
        self.dir.join(&self.config.ledger_witness)
    }

    /// What vouches for this workspace's ledger from outside its audit
    /// zone: the witness, and the entries release pointers name. Every
    /// ledger this workspace opens, to write or to read, is checked
    /// against them.
    pub async fn ledger_guards(&self, store: &Store) -> Result<Guards, Failure> {
        Ok(Guards {
            witness: Some(self.witness_path()),
            references: kfm_pipeline::release::ledger_references(store).await?,
        })
    }

    /// Opens the ledger as this workspace runs it. With `[events] url`
    /// (the distributed platform), entries are published to JetStream
    /// and a `kfm ledger sequencer` writes the log; otherwise this process
    /// writes it, or appends through the one that does. `source` names
    /// this producer in its events (`urn:kfm:api`).
    pub async fn open_ledger(
        &self,
        store: &Store,
        signer: LedgerSigner,
        opts: LedgerOptions,
        source: &str,
    ) -> Result<Ledger, LedgerError> {
        let Some(ev) = &self.config.events else {
            return Ledger::open(store.audit(), signer, opts).await;
        };
        let client = kfm_events::connect(ev, &self.dir)
            .await
            .map_err(|e| LedgerError::Unreachable(e.to_string()))?;
        let publisher = kfm_events::JetStreamPublisher::new(
            client,
            kfm_events::Names::with_prefix(self.config.environment, &ev.prefix),
            source,
            ev.max_in_flight,
        );
        Ok(Ledger::open_published(
            store.audit(),
            signer.verifier_key().to_owned(),
            opts,
            std::sync::Arc::new(publisher),
        ))
    }

    /// The writer's options from kfm.toml, with the guards.
    pub async fn ledger_options(&self, store: &Store) -> Result<LedgerOptions, Failure> {
        let mut opts = LedgerOptions::new(&self.config.ledger_origin);
        opts.batch_max = self.config.ledger_batch_max.max(1);
        opts.max_wait = self.config.ledger_max_wait;
        opts.give_up_after = self.config.ledger_give_up_after;
        opts.tile_every = self.config.ledger_tile_interval;
        opts.guards = self.ledger_guards(store).await?;
        opts.socket = Some(self.ledger_socket()?);
        opts.reach_writer = self.config.ledger_reach_writer;
        Ok(opts)
    }

    /// Where the process that writes this workspace's ledger listens for
    /// the others (`run/ledger.sock`, in a directory only the owner may
    /// enter). Absolute, so that every process names the same socket.
    pub fn ledger_socket(&self) -> Result<PathBuf, Failure> {
        let dir = std::path::absolute(&self.dir).unwrap_or_else(|_| self.dir.clone());
        let path = dir.join("run").join("ledger.sock");
        // sun_path holds 108 bytes with its terminating NUL.
        if path.as_os_str().len() > 107 {
            return Err(Failure::input(format!(
                "the workspace path is too long for the ledger writer's socket ({} bytes; at most 107): {}",
                path.as_os_str().len(),
                path.display()
            ))
            .hint("move the workspace to a shorter path, or link it from one (ln -s)"));
        }
        Ok(path)
    }

    /// A checked read-only view of the ledger.
    pub async fn ledger_view(
        &self,
        store: &Store,
        verifier_key: &str,
    ) -> Result<LedgerView, Failure> {
        let guards = self.ledger_guards(store).await?;
        Ok(LedgerView::open(
            &store.audit(),
            verifier_key,
            &self.config.ledger_origin,
            &guards,
        )
        .await?)
    }
}
