//! [`PostgresServer`]: a private PostgreSQL cluster (`initdb` + postmaster) per test, or one
//! per test binary through [`PostgresServer::shared`].
//!
//! Why a private cluster: code that stores data in PostgreSQL must be tested against a real
//! server, and tests must never touch the system cluster (port 5432) or each other's data.
//! Each cluster is initialised into its own temp dir under `/tmp`, listens only on
//! `127.0.0.1` on a port the kernel handed out (its Unix socket lives in the temp dir too),
//! trusts local connections and runs with durability off (`fsync`, `synchronous_commit`,
//! `full_page_writes`), which is what makes it fast enough to create per test.
//!
//! PostgreSQL refuses to run as root. When the effective uid is 0, `initdb` and `postgres`
//! run as the `postgres` system user through `runuser`, and the temp dir is handed to it.
//!
//! Every postmaster runs under a small `sh` watchdog (our direct child): it polls the owning
//! test process with `kill -0` and, once that process is gone, shuts the cluster down
//! (`SIGQUIT`, `SIGKILL` after 10 s) and removes its temp dir. That is what stops the shared
//! cluster, which lives in a `static` and is therefore never dropped, and it also cleans up
//! after a test process that was killed. The postmaster is only signalled by the pid in its
//! own `postmaster.pid`, after checking that this pid still runs `postgres` on our data
//! dir, so no other process (in particular not the system cluster) can be hit.
//!
//! As in the rest of the crate, signals are sent with the `kill` utility through
//! [`std::process::Command`], which keeps the crate free of `unsafe` and of libc bindings.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::process::{free_port, port_taken_since, signal};

/// Panic message when no PostgreSQL server binaries can be found.
const NOT_FOUND: &str =
    "PostgreSQL server binaries not found: install them with `apt-get install postgresql`";
/// Where Debian/Ubuntu install versioned server binaries (`<root>/<version>/bin`).
const VERSIONED_ROOT: &str = "/usr/lib/postgresql";
/// Parent of every cluster's temp dir; `$TMPDIR` may not be traversable by `postgres`.
const TEMP_PARENT: &str = "/tmp";
/// Prefix of every cluster's temp dir (the watchdog refuses to remove anything else).
const TEMP_PREFIX: &str = "tiercache-pg-";
/// System user that runs the cluster when we are root.
const OS_USER: &str = "postgres";
/// Database superuser created by `initdb` and used in every URL.
const DB_USER: &str = "postgres";
/// The only address the server listens on.
const HOST: &str = "127.0.0.1";
/// How long a starting server gets to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `SIGQUIT` (immediate shutdown) gets before `SIGKILL`.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Sleep between polls of every waiting loop (each poll may spawn `pg_isready`).
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How many fresh ports `start` tries before giving up.
const FRESH_PORT_ATTEMPTS: usize = 5;
/// Lines of the log shown in panic messages.
const LOG_TAIL_LINES: usize = 40;

/// Runs the server command (`"$@"`) as a background job and watches both it and the owner
/// process (`$1`); `$2` is the cluster's temp dir.
///
/// - The server ends on its own (or through [`PostgresServer`]'s `Drop`): reap it and exit
///   with its status, so the Rust side sees the exit of its child.
/// - The owner is gone: `SIGQUIT` the postmaster named in `postmaster.pid` (after checking
///   that it runs on our data dir), `SIGKILL` after 10 s, then remove the temp dir.
///
/// `alive` treats zombies as dead: nobody may reap an orphan (PID 1 in a container is not
/// always an init), and a zombie runs nothing.
const WATCHDOG_SCRIPT: &str = r#"
owner=$1
dir=$2
shift 2
alive() {
    kill -0 "$1" 2>/dev/null || return 1
    stat=
    read -r stat 2>/dev/null <"/proc/$1/stat" || return 0
    rest=${stat##*) }
    [ "${rest%% *}" != Z ]
}
postmaster() {
    pm=
    read -r pm 2>/dev/null <"$dir/data/postmaster.pid" || return 1
    [ -n "$pm" ] && alive "$pm" || return 1
    tr '\0' '\n' 2>/dev/null <"/proc/$pm/cmdline" | grep -qxF -- "$dir/data"
}
"$@" &
server=$!
while alive "$owner" && alive "$server"; do sleep 0.2; done
if alive "$owner"; then
    wait "$server"
    exit $?
fi
echo "tiercache-testkit watchdog: owner process $owner is gone, stopping the cluster" >&2
tries=0
while alive "$server" && [ "$tries" -lt 50 ]; do
    if postmaster; then kill -QUIT "$pm" 2>/dev/null; fi
    sleep 0.2
    tries=$((tries + 1))
done
if alive "$server"; then
    if postmaster; then kill -KILL "$pm" 2>/dev/null; fi
    kill -KILL "$server" 2>/dev/null
fi
wait "$server"
case $dir in
    /tmp/tiercache-pg-*) rm -rf -- "$dir" ;;
esac
"#;

/// Numbers the databases made by [`PostgresServer::create_database`] in this process.
static NEXT_DATABASE: AtomicU64 = AtomicU64::new(0);

/// A private PostgreSQL cluster on `127.0.0.1:<free port>`, owned by one test (or, through
/// [`PostgresServer::shared`], by the whole test binary).
///
/// The cluster lives in a fresh temp dir under `/tmp` (removed on drop): `data/` is the data
/// directory, `sock/` the Unix socket directory and `postgres.log` the output of `initdb`
/// and the server (see [`PostgresServer::log`]). Authentication is `trust`; connect as
/// superuser `postgres`, e.g. to a database from [`PostgresServer::create_database`].
/// Dropping the value shuts the server down (`SIGQUIT`, then `SIGKILL` after 10 s).
///
/// Constructors panic with a descriptive message (including the log tail) when the cluster
/// cannot be brought up, which is the useful behaviour inside a test.
#[derive(Debug)]
pub struct PostgresServer {
    /// Data, socket dir and log; kept alive as long as the server may run.
    dir: TempDir,
    /// Directory holding `postgres`, `pg_isready` and (usually) `psql`.
    bin_dir: PathBuf,
    port: u16,
    /// The `sh` watchdog running the server as a background job; exits once the server has.
    child: Child,
    /// The postmaster, from `postmaster.pid` (differs from the child: `sh`, maybe `runuser`).
    postmaster_pid: u32,
}

/// Why one launch attempt failed.
enum LaunchError {
    /// The server could not bind the port (another process has it).
    PortTaken,
    /// Any other failure, with a message ready for a panic.
    Failed(String),
}

impl PostgresServer {
    /// Starts a private cluster: `initdb` into a fresh temp dir, then `postgres` on a free
    /// `127.0.0.1` port, and waits (up to 30 s, polling) until `pg_isready` succeeds and the
    /// postmaster reports itself ready.
    ///
    /// The server binaries are taken from the highest version under
    /// `/usr/lib/postgresql/*/bin`, else from `pg_config --bindir`, else from `PATH`. The
    /// cluster is also watched on behalf of the current process, so it is shut down even if
    /// the process dies without dropping the value.
    ///
    /// # Panics
    ///
    /// If the binaries cannot be found, or if the cluster does not come up (the message
    /// then contains the tail of its log).
    pub fn start() -> PostgresServer {
        Self::start_watched(std::process::id())
    }

    /// One cluster shared by every test of this test binary, started on first use.
    ///
    /// Statics are never dropped, so the cluster is stopped (and its temp dir removed) by
    /// its watchdog shortly after the test process exits. Tests sharing it should each use
    /// their own database from [`PostgresServer::create_database`].
    ///
    /// # Panics
    ///
    /// As [`PostgresServer::start`]; a later call then tries to start it again.
    pub fn shared() -> &'static PostgresServer {
        static SHARED: OnceLock<PostgresServer> = OnceLock::new();
        SHARED.get_or_init(PostgresServer::start)
    }

    /// Like [`PostgresServer::start`], but the watchdog stops the cluster once the process
    /// `owner_pid` is gone instead of the current process.
    pub(crate) fn start_watched(owner_pid: u32) -> PostgresServer {
        let bin_dir = find_bin_dir().unwrap_or_else(|| panic!("{NOT_FOUND}"));
        let as_os_user = running_as_root();
        let dir = make_temp_dir(as_os_user);
        init_cluster(&bin_dir, dir.path(), as_os_user);
        let mut port = 0;
        for _ in 0..FRESH_PORT_ATTEMPTS {
            port = free_port();
            match launch(&bin_dir, dir.path(), port, owner_pid, as_os_user) {
                Ok((child, postmaster_pid)) => {
                    return PostgresServer {
                        dir,
                        bin_dir,
                        port,
                        child,
                        postmaster_pid,
                    };
                }
                Err(LaunchError::PortTaken) => continue,
                Err(LaunchError::Failed(message)) => panic!("{message}"),
            }
        }
        panic!(
            "postgres could not bind a free port in {FRESH_PORT_ATTEMPTS} attempts \
             (last tried {port}){}",
            log_tail(dir.path())
        );
    }

    /// The TCP port the server listens on (on `127.0.0.1`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connection URL of database `db` as superuser `postgres` (no password):
    /// `postgres://postgres@127.0.0.1:{port}/{db}`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{DB_USER}@{HOST}:{}/{db}", self.port)
    }

    /// Creates a fresh, empty database with a unique name (`test_<pid>_<counter>`) and
    /// returns its URL (see [`PostgresServer::url`]).
    ///
    /// # Panics
    ///
    /// If `psql` cannot run or `CREATE DATABASE` fails (the message contains its output).
    pub fn create_database(&self) -> String {
        let name = format!(
            "test_{}_{}",
            std::process::id(),
            NEXT_DATABASE.fetch_add(1, Ordering::Relaxed)
        );
        let output = pg_command(self.psql())
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", HOST, "-p"])
            .arg(self.port.to_string())
            .args(["-U", DB_USER, "-d", "postgres", "-c"])
            .arg(format!("CREATE DATABASE \"{name}\""))
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|error| panic!("failed to run psql: {error}"));
        assert!(
            output.status.success(),
            "psql could not create database {name} on port {} ({}): {}{}",
            self.port,
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            log_tail(self.dir.path())
        );
        self.url(&name)
    }

    /// Contents of the cluster's log (`initdb` output, then the server's), for
    /// diagnostics. Empty if the log cannot be read.
    pub fn log(&self) -> String {
        read_log(self.dir.path())
    }

    /// `psql` next to the server binaries, else the one on `PATH`.
    fn psql(&self) -> PathBuf {
        let psql = self.bin_dir.join("psql");
        if psql.is_file() {
            psql
        } else {
            PathBuf::from("psql")
        }
    }
}

impl Drop for PostgresServer {
    /// Immediate shutdown (`SIGQUIT` to the postmaster), `SIGKILL` after 10 s, and reaps the
    /// watchdog. Never panics.
    fn drop(&mut self) {
        let data_dir = self.dir.path().join("data");
        shutdown(&mut self.child, &data_dir, Some(self.postmaster_pid));
    }
}

/// Spawns the watchdog + server on `port` and waits until the server is ready. Returns the
/// watchdog child and the postmaster pid.
fn launch(
    bin_dir: &Path,
    dir: &Path,
    port: u16,
    owner_pid: u32,
    as_os_user: bool,
) -> Result<(Child, u32), LaunchError> {
    let log_offset = fs::metadata(log_path(dir)).map_or(0, |meta| meta.len());
    let mut child = spawn(bin_dir, dir, port, owner_pid, as_os_user);
    let data_dir = dir.join("data");
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(None) => {}
            Ok(Some(status)) => {
                if port_taken_since(&read_log(dir), log_offset) {
                    return Err(LaunchError::PortTaken);
                }
                return Err(LaunchError::Failed(format!(
                    "postgres on port {port} exited during startup ({status}){}",
                    log_tail(dir)
                )));
            }
            Err(error) => {
                shutdown(&mut child, &data_dir, None);
                return Err(LaunchError::Failed(format!(
                    "could not poll the postgres watchdog child: {error}"
                )));
            }
        }
        // Ready only when *our* postmaster says so: `pg_isready` alone could be answered
        // by another server that grabbed the port in the meantime.
        if let Some(pid) = ready_postmaster(&data_dir, port)
            && pg_isready(bin_dir, dir, port)
        {
            return Ok((child, pid));
        }
        if Instant::now() >= deadline {
            shutdown(&mut child, &data_dir, None);
            return Err(LaunchError::Failed(format!(
                "postgres on port {port} did not become ready within {START_TIMEOUT:?}{}",
                log_tail(dir)
            )));
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Spawns `sh -c WATCHDOG_SCRIPT` running the postmaster, with all output in the log.
fn spawn(bin_dir: &Path, dir: &Path, port: u16, owner_pid: u32, as_os_user: bool) -> Child {
    let log = open_log(dir);
    let log_err = log
        .try_clone()
        .unwrap_or_else(|error| panic!("failed to duplicate the postgres log handle: {error}"));
    let mut command = pg_command("sh");
    command
        .arg("-c")
        .arg(WATCHDOG_SCRIPT)
        .arg("sh")
        .arg(owner_pid.to_string())
        .arg(dir);
    if as_os_user {
        command.args(["runuser", "-u", OS_USER, "--"]);
    }
    command
        .arg(bin_dir.join("postgres"))
        .arg("-D")
        .arg(dir.join("data"))
        .arg("-p")
        .arg(port.to_string())
        .arg("-k")
        .arg(dir.join("sock"))
        .args(["-c", &format!("listen_addresses={HOST}")])
        .args(["-c", "fsync=off"])
        .args(["-c", "synchronous_commit=off"])
        .args(["-c", "full_page_writes=off"])
        .args(["-c", "max_connections=200"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    command
        .spawn()
        .unwrap_or_else(|error| panic!("failed to spawn the postgres watchdog shell: {error}"))
}

/// Stops the cluster run by `child`: `SIGQUIT` to the postmaster (`known_pid`, else the
/// pid in `postmaster.pid`) and waits for the watchdog to exit; after [`STOP_TIMEOUT`]
/// `SIGKILL`s both. Reaps the child. Never panics.
fn shutdown(child: &mut Child, data_dir: &Path, known_pid: Option<u32>) {
    let deadline = Instant::now() + STOP_TIMEOUT;
    let mut target = known_pid;
    let mut signalled = false;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return,
            Ok(None) => {}
            Err(_) => break,
        }
        if target.is_none() {
            target = read_pid_file(data_dir).map(|fields| fields.pid);
        }
        if let Some(pid) = target
            && !signalled
            && is_postmaster_of(pid, data_dir)
        {
            // Best effort: if `kill` fails, the deadline below falls back to SIGKILL.
            signalled = signal(pid, "QUIT").is_ok();
        }
        if Instant::now() >= deadline {
            break;
        }
        thread::sleep(POLL_INTERVAL);
    }
    if let Some(pid) = target
        && is_postmaster_of(pid, data_dir)
    {
        let _ = signal(pid, "KILL");
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The fields of `postmaster.pid` that readiness and shutdown need.
struct PidFile {
    pid: u32,
    port: Option<u16>,
    ready: bool,
}

/// Parses `<data_dir>/postmaster.pid`: line 1 is the pid, line 4 the port, line 8 the
/// status (`ready` once connections are accepted).
fn read_pid_file(data_dir: &Path) -> Option<PidFile> {
    let text = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    Some(PidFile {
        pid: lines.first()?.trim().parse().ok()?,
        port: lines.get(3).and_then(|line| line.trim().parse().ok()),
        ready: lines.get(7).is_some_and(|line| line.trim() == "ready"),
    })
}

/// The postmaster pid if our postmaster is up on `port` and accepting connections.
fn ready_postmaster(data_dir: &Path, port: u16) -> Option<u32> {
    read_pid_file(data_dir)
        .filter(|fields| fields.ready && fields.port == Some(port))
        .map(|fields| fields.pid)
}

/// Whether `pid` is a live `postgres` process running on `data_dir` (checked through
/// `/proc/<pid>/cmdline`), so a recycled pid is never signalled. Without `/proc`
/// (non-Linux) the pid is trusted.
fn is_postmaster_of(pid: u32, data_dir: &Path) -> bool {
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => {
            let mut args = cmdline.split(|byte| *byte == 0);
            let program_is_postgres = args
                .next()
                .is_some_and(|program| program.ends_with(b"postgres"));
            program_is_postgres && args.any(|arg| arg == data_dir.as_os_str().as_bytes())
        }
        Err(_) => !Path::new("/proc/self").exists(),
    }
}

/// `pg_isready -h 127.0.0.1 -p PORT` succeeds.
fn pg_isready(bin_dir: &Path, dir: &Path, port: u16) -> bool {
    pg_command(bin_dir.join("pg_isready"))
        .args(["-q", "-t", "1", "-h", HOST, "-p"])
        .arg(port.to_string())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Runs `initdb` into `<dir>/data`, appending its output to the log.
fn init_cluster(bin_dir: &Path, dir: &Path, as_os_user: bool) {
    let log = open_log(dir);
    let log_err = log
        .try_clone()
        .unwrap_or_else(|error| panic!("failed to duplicate the postgres log handle: {error}"));
    let initdb = bin_dir.join("initdb");
    let mut command = if as_os_user {
        let mut command = pg_command("runuser");
        command.args(["-u", OS_USER, "--"]).arg(&initdb);
        command
    } else {
        pg_command(&initdb)
    };
    let status = command
        .arg("-D")
        .arg(dir.join("data"))
        .args(["-A", "trust", "-U", DB_USER, "-E", "UTF8"])
        .args(["--no-sync", "--locale=C"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .status()
        .unwrap_or_else(|error| panic!("failed to run {}: {error}", initdb.display()));
    assert!(
        status.success(),
        "initdb failed ({status}){}",
        log_tail(dir)
    );
}

/// Creates the cluster's temp dir under `/tmp` (mode 0755 so `postgres` can traverse it)
/// with its socket dir, and hands it to the `postgres` user when we are root.
fn make_temp_dir(as_os_user: bool) -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempdir_in(TEMP_PARENT)
        .unwrap_or_else(|error| {
            panic!("failed to create a temporary directory for postgres in {TEMP_PARENT}: {error}")
        });
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|error| panic!("failed to chmod {}: {error}", dir.path().display()));
    fs::create_dir(dir.path().join("sock"))
        .unwrap_or_else(|error| panic!("failed to create the postgres socket dir: {error}"));
    if as_os_user {
        let output = Command::new("chown")
            .args(["-R", &format!("{OS_USER}:{OS_USER}")])
            .arg(dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|error| panic!("failed to run chown: {error}"));
        assert!(
            output.status.success(),
            "`chown -R {OS_USER}:{OS_USER} {}` failed ({}): {}",
            dir.path().display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    dir
}

/// The directory with `initdb`, `postgres` and `pg_isready`: the highest version under
/// `/usr/lib/postgresql/*/bin`, else `pg_config --bindir`, else the first `PATH` entry.
fn find_bin_dir() -> Option<PathBuf> {
    let has_server = |dir: &Path| {
        ["initdb", "postgres", "pg_isready"]
            .iter()
            .all(|name| dir.join(name).is_file())
    };
    let versioned = fs::read_dir(VERSIONED_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let key = version_key(&entry.file_name().to_string_lossy())?;
            Some((key, entry.path().join("bin")))
        })
        .filter(|(_, bin)| has_server(bin))
        .max_by(|(a, _), (b, _)| a.cmp(b))
        .map(|(_, bin)| bin);
    if versioned.is_some() {
        return versioned;
    }
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
        .filter(|bin| has_server(bin));
    if from_pg_config.is_some() {
        return from_pg_config;
    }
    std::env::split_paths(&std::env::var_os("PATH")?).find(|dir| has_server(dir))
}

/// Numeric sort key of a version directory name (`"15"`, `"9.6"`); `None` for others.
fn version_key(name: &str) -> Option<Vec<u64>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

/// Whether the effective uid is 0 (`id -u`), in which case PostgreSQL must run as the
/// `postgres` user. Checked once per process.
fn running_as_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
    })
}

/// A command for `program` without the caller's `PG*` environment (`PGHOST`, `PGPORT`,
/// `PGUSER`, ...), which could otherwise redirect a client to another server.
fn pg_command(program: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.as_bytes().starts_with(b"PG") {
            command.env_remove(key);
        }
    }
    command
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("postgres.log")
}

/// Opens the log for appending (creating it), for a child's stdout or stderr.
fn open_log(dir: &Path) -> File {
    File::options()
        .create(true)
        .append(true)
        .open(log_path(dir))
        .unwrap_or_else(|error| panic!("failed to open the postgres log: {error}"))
}

fn read_log(dir: &Path) -> String {
    fs::read(log_path(dir))
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// The last lines of the log, formatted for a panic message.
fn log_tail(dir: &Path) -> String {
    let log = read_log(dir);
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
    format!(
        "\n--- tail of {} ---\n{tail}\n--- end of log ---",
        log_path(dir).display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `pid` still runs: `kill -0` succeeds and `/proc` does not report a zombie.
    fn running(pid: u32) -> bool {
        if signal(pid, "0").is_err() {
            return false;
        }
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return true;
        };
        // Format: `pid (comm) STATE ...`; comm may contain spaces, so split after ')'.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        state != Some('Z')
    }

    /// Polls `condition` until it holds or `timeout` passes; returns whether it held.
    fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if condition() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Runs `SELECT 1` through `psql <url>` and returns its unaligned output.
    fn select_one(server: &PostgresServer, url: &str) -> String {
        let output = pg_command(server.psql())
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg(url)
            .args(["-c", "SELECT 1"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "psql {url} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    #[test]
    fn start_creates_distinct_usable_databases() {
        let server = PostgresServer::start();
        assert_ne!(server.port(), 5432);
        assert_eq!(
            server.url("x"),
            format!("postgres://postgres@127.0.0.1:{}/x", server.port())
        );
        let first = server.create_database();
        let second = server.create_database();
        assert_ne!(first, second);
        let prefix = format!("{}test_{}_", server.url(""), std::process::id());
        assert!(first.starts_with(&prefix), "{first}");
        assert!(second.starts_with(&prefix), "{second}");
        assert_eq!(select_one(&server, &first), "1");
        assert_eq!(select_one(&server, &second), "1");
        assert!(running(server.postmaster_pid));
        assert!(is_postmaster_of(
            server.postmaster_pid,
            &server.dir.path().join("data")
        ));
        assert!(server.log().contains("ready to accept connections"));
    }

    #[test]
    fn drop_stops_the_postmaster_and_removes_the_dir() {
        let server = PostgresServer::start();
        let pid = server.postmaster_pid;
        let dir = server.dir.path().to_owned();
        drop(server);
        assert!(
            eventually(Duration::from_secs(15), || !running(pid)),
            "postmaster {pid} survived drop"
        );
        assert!(!dir.exists());
        // Not "nothing answers on the port": another test's cluster may take the freed port at
        // once (seen under CPU load). The postmaster being gone is the check.
    }

    #[test]
    fn shared_is_started_once() {
        let first = PostgresServer::shared();
        let second = PostgresServer::shared();
        assert!(std::ptr::eq(first, second));
        assert_eq!(first.port(), second.port());
        let url = first.create_database();
        assert_eq!(select_one(first, &url), "1");
    }

    #[test]
    fn watchdog_stops_the_cluster_when_the_owner_exits() {
        // The owner must outlive the startup, so it is ended explicitly (and reaped: a
        // zombie would still answer `kill -0`) rather than left to a short sleep.
        let mut owner = Command::new("sleep").arg("600").spawn().unwrap();
        let server = PostgresServer::start_watched(owner.id());
        let pid = server.postmaster_pid;
        let dir = server.dir.path().to_owned();
        assert_eq!(select_one(&server, &server.url("postgres")), "1");

        owner.kill().unwrap();
        owner.wait().unwrap();
        assert!(
            eventually(Duration::from_secs(15), || !running(pid)),
            "postmaster {pid} survived its owner"
        );
        assert!(
            eventually(Duration::from_secs(15), || !dir.exists()),
            "the watchdog did not remove {}",
            dir.display()
        );
        assert!(!pg_isready(&server.bin_dir, Path::new("/"), server.port()));
        // Dropping afterwards finds nothing left to stop.
        drop(server);
    }

    #[test]
    fn finds_binaries_and_orders_versions() {
        let bin_dir = find_bin_dir().expect(NOT_FOUND);
        assert!(bin_dir.join("initdb").is_file());
        assert_eq!(version_key("15"), Some(vec![15]));
        assert!(version_key("9.6") < version_key("15"));
        assert_eq!(version_key("15-old"), None);
    }
}
