//! `clock-jump`: Redis's wall clock shifted by an offset the harness changes at any time.
//!
//! Every timestamp of the queue comes from Redis's `TIME`, so a jump of the Redis host's clock
//! is the one that matters. The kernel cannot shift one container's wall clock (time
//! namespaces offset only the monotonic clocks), and libfaketime makes Redis 7 fail at start
//! ("Unexpected recursive calls to clock_gettime()": its allocator reads the clock while
//! libfaketime initialises). So `clockshift.c`, compiled here with the host's C compiler, is
//! preloaded into `redis-server`: it adds an offset read from a shared mapping of a control
//! file to `CLOCK_REALTIME` (and `gettimeofday`, `time`), going straight to the kernel, and
//! leaves the monotonic clocks alone, as a real clock jump does. The harness writes the file; the
//! next clock read sees the new offset. Mounted at [`CONTAINER_DIR`] in the docker runtime.

use std::{
    io::{Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, bail};

/// Where the library and the control file are bind-mounted in the Redis container.
pub const CONTAINER_DIR: &str = "/clockshift";
const LIBRARY: &str = "libclockshift.so";
const CONTROL: &str = "offset";
const SOURCE: &str = include_str!("clockshift.c");

/// The compiled library and the control file of one run; removed on drop.
pub struct ClockShift {
    dir: tempfile::TempDir,
    offset_ns: i64,
}

impl ClockShift {
    /// Compiles the library and writes a zero offset.
    pub fn prepare(run_id: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("agent-harness-{run_id}-clock-"))
            .tempdir()
            .context("creating the clock shifter's directory")?;
        let source = dir.path().join("clockshift.c");
        std::fs::write(&source, SOURCE)?;
        let output = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(dir.path().join(LIBRARY))
            .arg(&source)
            .output()
            .context("compiling the clock shifter needs a C compiler (`cc`, Debian's gcc)")?;
        if !output.status.success() {
            bail!(
                "compiling the clock shifter failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        // A whole page, so the mapping in Redis covers the file.
        std::fs::write(dir.path().join(CONTROL), [0u8; 4096])?;
        // Redis runs as an unprivileged user in its image.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        Ok(Self { dir, offset_ns: 0 })
    }

    /// The directory holding the library and the control file (bind-mounted into Redis).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The environment that makes a `redis-server` started in `dir` (the host directory, or
    /// [`CONTAINER_DIR`] inside a container) use the shifted clock.
    pub fn env(dir: &Path) -> [(String, String); 2] {
        [
            (
                "LD_PRELOAD".to_string(),
                dir.join(LIBRARY).display().to_string(),
            ),
            (
                "AGENT_CLOCK_OFFSET_FILE".to_string(),
                dir.join(CONTROL).display().to_string(),
            ),
        ]
    }

    /// Moves the clock by `by` (forward when `forward`); jumps add up. Returns the total offset.
    pub fn jump(&mut self, by: Duration, forward: bool) -> anyhow::Result<i64> {
        let by = i64::try_from(by.as_nanos()).context("a clock jump of over 292 years")?;
        self.offset_ns += if forward { by } else { -by };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(self.dir.path().join(CONTROL))
            .context("opening the clock offset file")?;
        file.seek(SeekFrom::Start(0))?;
        // One aligned 8-byte write: a reader sees the old offset or the new one.
        file.write_all(&self.offset_ns.to_le_bytes())?;
        Ok(self.offset_ns)
    }
}

/// The control directory as the Redis process sees it.
pub fn redis_view(shift: &ClockShift, in_container: bool) -> PathBuf {
    if in_container {
        PathBuf::from(CONTAINER_DIR)
    } else {
        shift.dir().to_path_buf()
    }
}
