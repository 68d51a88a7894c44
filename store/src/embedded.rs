//! An embedded PostgreSQL cluster run from the system's PostgreSQL binaries (R10.1).
//!
//! `tenantflow serve` without `DATABASE_URL` and every test binary use this. The cluster is
//! created once with `initdb` (password auth, a generated password kept 0600 in the data
//! directory), then started as a child process in its own process group, on a unix socket
//! in the cluster directory and a free loopback port. When we run as root, PostgreSQL runs
//! as the `postgres` system user, because it refuses to run as root.
//!
//! A small watchdog process holds the read end of a pipe from us: when this process ends
//! in any way (even `kill -9`), the pipe closes and the watchdog stops PostgreSQL, so no
//! stray `postgres` processes outlive tenantflow.

use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::PgConnectOptions;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The role tenantflow connects as inside its embedded cluster.
const SUPERUSER: &str = "tenantflow";

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "no PostgreSQL server binaries found (looked at `pg_config --bindir`, \
         /usr/lib/postgresql/*/bin and PATH). Install them (Debian/Ubuntu: \
         `apt-get install postgresql`) or set DATABASE_URL to use an existing server"
    )]
    BinariesNotFound,
    #[error("the system user `postgres` is needed to run PostgreSQL as root but does not exist; install the postgresql package or run tenantflow as an unprivileged user")]
    NoPostgresUser,
    #[error("{action} failed: {detail}")]
    Command {
        action: &'static str,
        detail: String,
    },
    #[error("I/O error at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the cluster in {0} is already used by a running PostgreSQL (pid {1}); is another tenantflow running with this data directory?")]
    AlreadyRunning(PathBuf, u32),
    #[error("the cluster in {0} exists but its password file {1} is missing; restore it or remove the cluster")]
    PasswordMissing(PathBuf, PathBuf),
    #[error("PostgreSQL did not become ready within {0:?}; see its log at {1}")]
    NotReady(Duration, PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EmbeddedError + '_ {
    move |source| EmbeddedError::Io {
        path: path.to_owned(),
        source,
    }
}

/// How to start the cluster.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// tenantflow's data directory; the cluster lives in `<data_dir>/postgres` unless the
    /// `postgres` user cannot reach it (see [`EmbeddedPostgres::start`]).
    pub data_dir: PathBuf,
    /// Trade durability for speed (fsync off). Only for throwaway test clusters.
    pub ephemeral: bool,
    /// Remove the data directory (cluster included) when the cluster stops (test clusters).
    pub remove_on_exit: bool,
}

/// A running embedded cluster.
pub struct EmbeddedPostgres {
    cluster_dir: PathBuf,
    log_path: PathBuf,
    port: u16,
    password: SecretString,
    postgres: Child,
    watchdog: Option<Child>,
    /// The data directory, when it is to be removed on exit.
    remove_on_exit: Option<PathBuf>,
}

impl std::fmt::Debug for EmbeddedPostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedPostgres")
            .field("cluster_dir", &self.cluster_dir)
            .field("port", &self.port)
            .field("pid", &self.postgres.id())
            .finish_non_exhaustive()
    }
}

struct RunAs {
    uid: u32,
    gid: u32,
}

impl EmbeddedPostgres {
    /// Creates the cluster on first use, then starts it and waits until it accepts
    /// connections. Blocking: call it from `spawn_blocking` in async code.
    pub fn start(options: &EmbeddedOptions) -> Result<Self, EmbeddedError> {
        let Prepared {
            bin_dir,
            run_as,
            data_dir,
            cluster_dir,
        } = prepare(options)?;
        let password_file = data_dir.join("postgres.password");
        let initialized = cluster_dir.join("PG_VERSION").exists();
        let password = if initialized {
            read_password(&password_file).ok_or_else(|| {
                EmbeddedError::PasswordMissing(cluster_dir.clone(), password_file.clone())
            })?
        } else {
            let password = ensure_password(&password_file)?;
            initdb(
                &bin_dir,
                &cluster_dir,
                &password,
                run_as.as_ref(),
                options.ephemeral,
            )?;
            password
        };
        clear_stale_pid(&cluster_dir)?;

        let log_path = data_dir.join("postgres.log");
        let mut last_err = None;
        // A port picked as free can be taken before PostgreSQL binds it: try a few.
        for _ in 0..3 {
            let port = free_port().map_err(io_err(&data_dir))?;
            match spawn_postgres(
                &bin_dir,
                &cluster_dir,
                &log_path,
                port,
                run_as.as_ref(),
                options.ephemeral,
            ) {
                Ok(mut postgres) => {
                    match wait_ready(&bin_dir, &cluster_dir, port, &mut postgres, &log_path) {
                        Ok(()) => {
                            let watchdog = spawn_watchdog(
                                postgres.id(),
                                options.remove_on_exit.then_some(&data_dir),
                            )?;
                            tracing::info!(cluster_dir = %cluster_dir.display(), port, "embedded PostgreSQL is ready");
                            return Ok(Self {
                                cluster_dir,
                                log_path,
                                port,
                                password,
                                postgres,
                                watchdog: Some(watchdog),
                                remove_on_exit: options.remove_on_exit.then(|| data_dir.clone()),
                            });
                        }
                        Err(e) => {
                            let _ = postgres.kill();
                            let _ = postgres.wait();
                            last_err = Some(e);
                        }
                    }
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or(EmbeddedError::NotReady(Duration::ZERO, log_path)))
    }

    /// A streaming replica of `primary` (hot standby: it answers reads), created with
    /// `pg_basebackup` on first use, then started as [`start`](Self::start) starts a
    /// cluster. Blocking. The replica shares the primary's superuser password.
    pub fn start_replica_of(
        primary: &EmbeddedPostgres,
        options: &EmbeddedOptions,
    ) -> Result<Self, EmbeddedError> {
        let Prepared {
            bin_dir,
            run_as,
            data_dir,
            cluster_dir,
        } = prepare(options)?;
        if !cluster_dir.join("PG_VERSION").exists() {
            let password_file = data_dir.join("postgres.password");
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&password_file)
                .map_err(io_err(&password_file))?;
            f.write_all(primary.password.expose_secret().as_bytes())
                .map_err(io_err(&password_file))?;
            let mut cmd = command(&bin_dir, "pg_basebackup", run_as.as_ref());
            cmd.arg("-D")
                .arg(&cluster_dir)
                .arg("-h")
                .arg(&primary.cluster_dir)
                .args(["-p", &primary.port.to_string(), "-U", SUPERUSER])
                // WAL streamed alongside, a checkpoint at once, standby.signal and
                // primary_conninfo written (-R).
                .args(["-X", "stream", "-c", "fast", "-R"])
                .env("PGPASSWORD", primary.password.expose_secret());
            if options.ephemeral {
                cmd.arg("--no-sync");
            }
            let out = cmd.output().map_err(|e| EmbeddedError::Command {
                action: "pg_basebackup",
                detail: e.to_string(),
            })?;
            if !out.status.success() {
                return Err(EmbeddedError::Command {
                    action: "pg_basebackup",
                    detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                });
            }
            tracing::info!(cluster_dir = %cluster_dir.display(), "made a streaming replica of the embedded cluster");
        }
        Self::start(options)
    }

    /// Connection options for a database of this cluster (over the unix socket).
    pub fn connect_options(&self, database: &str) -> PgConnectOptions {
        PgConnectOptions::new()
            .socket(&self.cluster_dir)
            .port(self.port)
            .username(SUPERUSER)
            .password(self.password.expose_secret())
            .database(database)
    }

    /// A `postgres://` URL over loopback TCP (for other processes, e.g. test children).
    pub fn url(&self, database: &str) -> SecretString {
        SecretString::from(format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}",
            self.password.expose_secret(),
            self.port
        ))
    }

    /// The loopback TCP port the cluster also listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where the cluster's files are.
    pub fn cluster_dir(&self) -> &Path {
        &self.cluster_dir
    }

    /// PostgreSQL's own log.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Stops PostgreSQL with a fast shutdown (running transactions roll back; everything
    /// committed is on disk) and waits for it to exit.
    pub fn stop(mut self) -> Result<(), EmbeddedError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), EmbeddedError> {
        // The watchdog's job is done once we stop PostgreSQL ourselves.
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        if self.postgres.try_wait().ok().flatten().is_some() {
            return Ok(());
        }
        signal(self.postgres.id(), "INT")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.postgres.try_wait().ok().flatten().is_some() {
                tracing::info!("embedded PostgreSQL stopped");
                self.remove_if_ephemeral();
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Fast shutdown hung: an immediate one still loses nothing committed (WAL replay).
        signal(self.postgres.id(), "QUIT")?;
        let _ = self.postgres.wait();
        self.remove_if_ephemeral();
        Ok(())
    }

    fn remove_if_ephemeral(&self) {
        if let Some(dir) = &self.remove_on_exit {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        if self.watchdog.is_some() {
            let _ = self.shutdown();
        }
    }
}

fn signal(pid: u32, sig: &str) -> Result<(), EmbeddedError> {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| EmbeddedError::Command {
            action: "kill",
            detail: e.to_string(),
        })?;
    if !status.success() {
        tracing::debug!(pid, sig, "signal not delivered (process already gone)");
    }
    Ok(())
}

/// Finds a directory holding `initdb`, `postgres` and `pg_ctl`.
pub fn find_bin_dir() -> Option<PathBuf> {
    let has_all = |d: &Path| {
        ["initdb", "postgres", "pg_isready"]
            .iter()
            .all(|b| d.join(b).is_file())
    };
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("TENANTFLOW_PG_BINDIR") {
        candidates.push(PathBuf::from(dir));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        }
    }
    // Debian/Ubuntu keep server binaries in versioned directories: newest first.
    if let Ok(entries) = fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<(u32, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                Some((v, e.path().join("bin")))
            })
            .collect();
        versions.sort_by_key(|v| std::cmp::Reverse(v.0));
        candidates.extend(versions.into_iter().map(|(_, p)| p));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    candidates.into_iter().find(|d| has_all(d))
}

fn running_as_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn postgres_user() -> Result<RunAs, EmbeddedError> {
    let passwd = fs::read_to_string("/etc/passwd").map_err(io_err(Path::new("/etc/passwd")))?;
    passwd
        .lines()
        .find_map(|line| {
            let mut f = line.split(':');
            (f.next()? == "postgres").then_some(())?;
            let _pw = f.next()?;
            let uid = f.next()?.parse().ok()?;
            let gid = f.next()?.parse().ok()?;
            Some(RunAs { uid, gid })
        })
        .ok_or(EmbeddedError::NoPostgresUser)
}

/// `<data_dir>/postgres`, unless we run as root and the postgres user cannot traverse
/// every directory above it (a checkout under a private home directory): then a
/// postgres-owned directory under /var/lib keyed by the data directory's path.
/// Where a cluster goes, made ready for the `postgres` user.
struct Prepared {
    bin_dir: PathBuf,
    run_as: Option<RunAs>,
    data_dir: PathBuf,
    cluster_dir: PathBuf,
}

fn prepare(options: &EmbeddedOptions) -> Result<Prepared, EmbeddedError> {
    let bin_dir = find_bin_dir().ok_or(EmbeddedError::BinariesNotFound)?;
    let run_as = if running_as_root() {
        Some(postgres_user()?)
    } else {
        None
    };
    fs::create_dir_all(&options.data_dir).map_err(io_err(&options.data_dir))?;
    let data_dir = fs::canonicalize(&options.data_dir).map_err(io_err(&options.data_dir))?;
    let cluster_dir = cluster_dir_for(&data_dir, run_as.as_ref());
    if cluster_dir != data_dir.join("postgres") {
        tracing::warn!(
            cluster_dir = %cluster_dir.display(),
            "the postgres user cannot reach the data directory; keeping the cluster elsewhere"
        );
    }
    fs::create_dir_all(&cluster_dir).map_err(io_err(&cluster_dir))?;
    if let Some(u) = &run_as {
        std::os::unix::fs::chown(&cluster_dir, Some(u.uid), Some(u.gid))
            .map_err(io_err(&cluster_dir))?;
    }
    fs::set_permissions(&cluster_dir, fs::Permissions::from_mode(0o700))
        .map_err(io_err(&cluster_dir))?;
    Ok(Prepared {
        bin_dir,
        run_as,
        data_dir,
        cluster_dir,
    })
}

fn cluster_dir_for(data_dir: &Path, run_as: Option<&RunAs>) -> PathBuf {
    let preferred = data_dir.join("postgres");
    let Some(user) = run_as else {
        return preferred;
    };
    let traversable = data_dir.ancestors().all(|dir| match fs::metadata(dir) {
        Ok(m) => {
            let mode = m.mode();
            (m.uid() == user.uid && mode & 0o100 != 0)
                || (m.gid() == user.gid && mode & 0o010 != 0)
                || mode & 0o001 != 0
        }
        Err(_) => false,
    });
    if traversable {
        return preferred;
    }
    use sha2::{Digest, Sha256};
    let key = hex::encode(&Sha256::digest(data_dir.as_os_str().as_encoded_bytes())[..8]);
    PathBuf::from("/var/lib/tenantflow").join(format!("cluster-{key}"))
}

fn read_password(path: &Path) -> Option<SecretString> {
    let s = fs::read_to_string(path).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| SecretString::from(s.to_owned()))
}

fn ensure_password(path: &Path) -> Result<SecretString, EmbeddedError> {
    if let Some(p) = read_password(path) {
        return Ok(p);
    }
    use rand::distributions::{Alphanumeric, DistString};
    let password = Alphanumeric.sample_string(&mut rand::thread_rng(), 32);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(password.as_bytes()).map_err(io_err(path))?;
    Ok(SecretString::from(password))
}

fn command(bin_dir: &Path, name: &str, run_as: Option<&RunAs>) -> Command {
    let mut cmd = Command::new(bin_dir.join(name));
    if let Some(u) = run_as {
        cmd.uid(u.uid).gid(u.gid);
        // The postgres user may not be able to read our working directory.
        cmd.current_dir("/");
    }
    cmd
}

fn initdb(
    bin_dir: &Path,
    cluster_dir: &Path,
    password: &SecretString,
    run_as: Option<&RunAs>,
    ephemeral: bool,
) -> Result<(), EmbeddedError> {
    // initdb reads the superuser password from a file the postgres user can read; it
    // lives only for the duration of initdb, inside the (0700) cluster's parent.
    // Unique per initdb: one process may create several clusters at once (tests).
    let pwfile = std::env::temp_dir().join(format!(
        "tenantflow-initdb-{}-{}.pw",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&pwfile)
            .map_err(io_err(&pwfile))?;
        f.write_all(password.expose_secret().as_bytes())
            .map_err(io_err(&pwfile))?;
    }
    if let Some(u) = run_as {
        std::os::unix::fs::chown(&pwfile, Some(u.uid), Some(u.gid)).map_err(io_err(&pwfile))?;
    }
    let mut cmd = command(bin_dir, "initdb", run_as);
    cmd.arg("-D")
        .arg(cluster_dir)
        .args([
            "-U",
            SUPERUSER,
            "--auth=scram-sha-256",
            "-E",
            "UTF8",
            "--no-locale",
        ])
        .arg(format!("--pwfile={}", pwfile.display()));
    if ephemeral {
        cmd.arg("--no-sync");
    }
    let out = cmd.output();
    let _ = fs::remove_file(&pwfile);
    let out = out.map_err(|e| EmbeddedError::Command {
        action: "initdb",
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(EmbeddedError::Command {
            action: "initdb",
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    tracing::info!(cluster_dir = %cluster_dir.display(), "initialised a new PostgreSQL cluster");
    Ok(())
}

/// A `postmaster.pid` left by a crash names a process that is gone (or a reused pid that
/// is not a postgres serving this directory): remove it so the server can start.
fn clear_stale_pid(cluster_dir: &Path) -> Result<(), EmbeddedError> {
    let pid_file = cluster_dir.join("postmaster.pid");
    // A server from a crashed tenantflow may still be shutting down (its watchdog stops
    // it): give it a moment before calling the cluster busy.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let Ok(content) = fs::read_to_string(&pid_file) else {
            return Ok(());
        };
        let pid: Option<u32> = content.lines().next().and_then(|l| l.trim().parse().ok());
        let live = pid.filter(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.contains("postgres") && cmdline.contains(&*cluster_dir.to_string_lossy())
        });
        match live {
            None => break,
            Some(pid) if Instant::now() >= deadline => {
                return Err(EmbeddedError::AlreadyRunning(cluster_dir.to_owned(), pid))
            }
            Some(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    tracing::warn!(pid_file = %pid_file.display(), "removing a stale postmaster.pid left by a crash");
    fs::remove_file(&pid_file).map_err(io_err(&pid_file))
}

fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(l.local_addr()?.port())
}

fn spawn_postgres(
    bin_dir: &Path,
    cluster_dir: &Path,
    log_path: &Path,
    port: u16,
    run_as: Option<&RunAs>,
    ephemeral: bool,
) -> Result<Child, EmbeddedError> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(io_err(log_path))?;
    let log2 = log.try_clone().map_err(io_err(log_path))?;
    let mut cmd = command(bin_dir, "postgres", run_as);
    cmd.arg("-D")
        .arg(cluster_dir)
        .arg("-p")
        .arg(port.to_string())
        .arg("-c")
        .arg("listen_addresses=127.0.0.1")
        .arg("-c")
        .arg(format!("unix_socket_directories={}", cluster_dir.display()))
        .args(["-c", "max_connections=200"]);
    if ephemeral {
        cmd.args([
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ]);
    }
    // Its own process group: a Ctrl-C in the terminal reaches tenantflow, which then shuts
    // PostgreSQL down after the API, instead of both racing.
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    cmd.spawn().map_err(|e| EmbeddedError::Command {
        action: "starting postgres",
        detail: e.to_string(),
    })
}

fn wait_ready(
    bin_dir: &Path,
    cluster_dir: &Path,
    port: u16,
    child: &mut Child,
    log_path: &Path,
) -> Result<(), EmbeddedError> {
    let limit = Duration::from_secs(60);
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(EmbeddedError::Command {
                action: "starting postgres",
                detail: format!("exited with {status}; see {}", log_path.display()),
            });
        }
        let ready = Command::new(bin_dir.join("pg_isready"))
            .arg("-q")
            .arg("-h")
            .arg(cluster_dir)
            .arg("-p")
            .arg(port.to_string())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ready {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(EmbeddedError::NotReady(limit, log_path.to_owned()))
}

/// `sh` reading our pipe until it closes (we exited), then stopping PostgreSQL and, for
/// throwaway clusters, removing its directory.
fn spawn_watchdog(pid: u32, remove: Option<&PathBuf>) -> Result<Child, EmbeddedError> {
    let mut script = format!(
        "cat >/dev/null; kill -INT {pid} 2>/dev/null; \
         i=0; while kill -0 {pid} 2>/dev/null && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done"
    );
    if let Some(dir) = remove {
        script.push_str(&format!("; rm -rf '{}'", dir.display()));
    }
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| EmbeddedError::Command {
            action: "starting the watchdog",
            detail: e.to_string(),
        })
}
