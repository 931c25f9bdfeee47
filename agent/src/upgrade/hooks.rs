//! The admin's hook directories (`<config dir>/<step>.d`), run like `run-parts`: regular
//! executable files in byte order of their names, skipping dotfiles and editor or package
//! manager leftovers. A script or directory others could change is refused when the agent
//! runs as root (it would run the script as root). Each script runs in its own process group
//! with the run's environment and a timeout; stdout and stderr go to one pipe, kept bounded
//! (head and tail, like a command's output).

use std::{
    collections::VecDeque,
    os::unix::{
        fs::{MetadataExt as _, PermissionsExt as _},
        process::ExitStatusExt as _,
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use tokio::io::AsyncReadExt as _;

use crate::protocol::{rollout::HookResult, MAX_OUTPUT_BYTES};

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("refusing to run {path}: {why}")]
    Unsafe { path: PathBuf, why: String },
    #[error("cannot read the hook directory {path}")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The scripts of one hook directory, in the order they run. A missing directory has none.
pub fn scripts(dir: &Path) -> Result<Vec<PathBuf>, HookError> {
    let read_dir = |source| HookError::ReadDir {
        path: dir.to_owned(),
        source,
    };
    let entries = match fs_err::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read_dir(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(read_dir)?;
        let name = entry.file_name();
        if is_leftover(&name.to_string_lossy()) {
            continue;
        }
        names.push(name);
    }
    // run-parts order: the bytes of the names, whatever the locale or filesystem.
    names.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
    let mut scripts = Vec::new();
    for name in names {
        let path = dir.join(name);
        // Symlinks are followed, as run-parts does.
        let Ok(meta) = fs_err::metadata(&path) else {
            tracing::warn!(path = %path.display(), "skipping a hook that cannot be read (dangling link?)");
            continue;
        };
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            tracing::debug!(path = %path.display(), "skipping a hook that is not an executable file");
            continue;
        }
        scripts.push(path);
    }
    if !scripts.is_empty() {
        check_owner_and_mode(dir)?;
        for script in &scripts {
            check_owner_and_mode(script)?;
        }
    }
    Ok(scripts)
}

/// Names run-parts and apt leave alone: dotfiles, `*~`, `*.dpkg-old` and friends.
fn is_leftover(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || name.contains(".dpkg-")
        || name.contains(".ucf-")
        || [
            ".disabled",
            ".bak",
            ".orig",
            ".save",
            ".swp",
            ".rpmnew",
            ".rpmsave",
        ]
        .iter()
        .any(|suffix| name.ends_with(suffix))
}

/// A script the agent runs as root must be root's alone: owned by root and not writable by
/// group or others (else anyone with that write access gets root on the next upgrade).
fn check_owner_and_mode(path: &Path) -> Result<(), HookError> {
    let meta = fs_err::metadata(path).map_err(|e| HookError::Unsafe {
        path: path.to_owned(),
        why: e.to_string(),
    })?;
    let mode = meta.permissions().mode();
    if mode & 0o022 != 0 {
        return Err(HookError::Unsafe {
            path: path.to_owned(),
            why: format!(
                "it is writable by its group or by others (mode {:o}); chmod go-w it",
                mode & 0o7777
            ),
        });
    }
    if running_as_root() && meta.uid() != 0 {
        return Err(HookError::Unsafe {
            path: path.to_owned(),
            why: format!(
                "the agent runs as root and it is owned by uid {}; chown root it",
                meta.uid()
            ),
        });
    }
    Ok(())
}

fn running_as_root() -> bool {
    fs_err::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Runs `program args` with `env` added, killing its process group at `timeout`.
/// `dir` and `name` label the result (`builtin` for the agent's own commands).
pub async fn run(
    dir: &str,
    name: &str,
    program: &Path,
    args: &[&str],
    env: &[(String, String)],
    timeout: Duration,
) -> HookResult {
    let started = Instant::now();
    let (exit_code, output) = match spawn_and_wait(program, args, env, timeout).await {
        Ok(done) => done,
        Err(e) => (
            Some(127),
            format!("cannot run {}: {e}\n", program.display()),
        ),
    };
    HookResult {
        dir: dir.to_owned(),
        name: name.to_owned(),
        exit_code,
        output,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    }
}

async fn spawn_and_wait(
    program: &Path,
    args: &[&str],
    env: &[(String, String)],
    timeout: Duration,
) -> std::io::Result<(Option<i32>, String)> {
    let (sender, mut receiver) = tokio::net::unix::pipe::pipe()?;
    let write_end = sender.into_blocking_fd()?;
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(write_end.try_clone()?)
        .stderr(write_end)
        // Its own process group: a timeout kills the script and everything it started, and a
        // Ctrl-C meant for the agent does not reach it.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn()?;
    // The parent's copy of the write end went with `command`; drop it so EOF can come.
    drop(command);
    let pgid = child.id().map(|id| id as i32);
    let mut output = BoundedOutput::default();
    let mut buf = vec![0u8; 8192];
    let deadline = tokio::time::Instant::now() + timeout;
    let mut status = None;
    let mut timed_out = false;
    let mut eof = false;
    // Read until the script exits (or its deadline), then drain what is left for a moment: a
    // daemon the script started may hold the pipe open forever.
    loop {
        tokio::select! {
            read = receiver.read(&mut buf), if status.is_none() && !eof => match read {
                Ok(0) | Err(_) => eof = true,
                Ok(n) => output.push(&buf[..n]),
            },
            exited = child.wait(), if status.is_none() => status = Some(exited?),
            () = tokio::time::sleep_until(deadline), if status.is_none() => {
                timed_out = true;
                kill_group(pgid);
                status = Some(child.wait().await?);
            }
            else => break,
        }
    }
    let drain_until = tokio::time::Instant::now() + Duration::from_secs(1);
    while !eof {
        match tokio::time::timeout_at(drain_until, receiver.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => output.push(&buf[..n]),
            _ => eof = true,
        }
    }
    let mut text = output.into_string();
    let status = status.expect("the loop ends with a status");
    if timed_out {
        text.push_str(&format!("\n[killed after {} s]\n", timeout.as_secs()));
        return Ok((None, text));
    }
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    Ok((Some(code), text))
}

fn kill_group(pgid: Option<i32>) {
    let Some(pgid) = pgid.and_then(rustix::process::Pid::from_raw) else {
        return;
    };
    if let Err(e) = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL) {
        tracing::warn!(error = %e, "cannot kill a hook's process group");
    }
}

/// The first and last bytes of a stream, within [`MAX_OUTPUT_BYTES`] in all.
#[derive(Default)]
struct BoundedOutput {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    cut: u64,
}

impl BoundedOutput {
    const HALF: usize = (MAX_OUTPUT_BYTES - 100) / 2;

    fn push(&mut self, mut bytes: &[u8]) {
        let room = Self::HALF.saturating_sub(self.head.len());
        let take = room.min(bytes.len());
        self.head.extend_from_slice(&bytes[..take]);
        bytes = &bytes[take..];
        self.tail.extend(bytes);
        while self.tail.len() > Self::HALF {
            self.tail.pop_front();
            self.cut += 1;
        }
    }

    fn into_string(self) -> String {
        let head = String::from_utf8_lossy(&self.head).into_owned();
        let tail: Vec<u8> = self.tail.into();
        let tail = String::from_utf8_lossy(&tail);
        if self.cut == 0 {
            head + &tail
        } else {
            format!("{head}\n[… {} bytes cut …]\n{tail}", self.cut)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &Path, name: &str, body: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        fs_err::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs_err::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn scripts_run_in_byte_order_without_leftovers_or_non_executables() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs_err::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        for name in [
            "20-b",
            "10-a",
            "B-upper",
            "a-lower",
            "10-a~",
            ".hidden",
            "x.dpkg-old",
        ] {
            script(d, name, "true", 0o755);
        }
        script(d, "15-not-executable", "true", 0o644);
        fs_err::create_dir(d.join("12-dir")).unwrap();
        let names: Vec<String> = scripts(d)
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["10-a", "20-b", "B-upper", "a-lower"]);
        assert!(scripts(&d.join("missing")).unwrap().is_empty());
    }

    #[test]
    fn a_script_others_may_change_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs_err::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        script(dir.path(), "10-open", "true", 0o777);
        let error = scripts(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains("10-open") && error.contains("writable"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_hook_gets_its_environment_and_its_exit_code_and_output_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = script(
            dir.path(),
            "10-env",
            "echo \"run $APTGATE_RUN_ID\"; echo oops >&2; exit 3",
            0o755,
        );
        let env = [("APTGATE_RUN_ID".to_owned(), "r1".to_owned())];
        let result = run(
            "pre_update.d",
            "10-env",
            &path,
            &[],
            &env,
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(result.exit_code, Some(3));
        assert_eq!(result.output, "run r1\noops\n");
        assert_eq!(result.dir, "pre_update.d");
    }

    #[tokio::test]
    async fn a_hook_that_closes_its_output_still_meets_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = script(
            dir.path(),
            "10-quiet",
            "exec >/dev/null 2>&1; sleep 30",
            0o755,
        );
        let result = run(
            "pre_update.d",
            "10-quiet",
            &path,
            &[],
            &[],
            Duration::from_millis(300),
        )
        .await;
        assert_eq!(result.exit_code, None, "{}", result.output);
    }

    #[tokio::test]
    async fn a_hook_past_its_timeout_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let path = script(
            dir.path(),
            "10-slow",
            "echo started; sleep 30 & sleep 30",
            0o755,
        );
        let started = Instant::now();
        let result = run(
            "update.d",
            "10-slow",
            &path,
            &[],
            &[],
            Duration::from_millis(300),
        )
        .await;
        assert_eq!(result.exit_code, None);
        assert!(result.output.starts_with("started\n"), "{}", result.output);
        assert!(result.output.contains("killed after"), "{}", result.output);
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn long_output_keeps_its_head_and_tail() {
        let mut output = BoundedOutput::default();
        output.push(b"HEAD");
        for _ in 0..100 {
            output.push(&[b'x'; 4096]);
        }
        output.push(b"TAIL");
        let text = output.into_string();
        assert!(text.len() <= MAX_OUTPUT_BYTES);
        assert!(text.starts_with("HEAD") && text.ends_with("TAIL"));
        assert!(text.contains("bytes cut"));
    }
}
