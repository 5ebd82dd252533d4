//! Running the RabbitMQ CLI tools with a deadline: a command that hangs is killed, never waited on forever.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `program args` and returns its standard output; an `Err` says why it failed (its standard error, its
/// exit status, or that it ran longer than `timeout` and was killed).
pub(crate) fn run(program: &str, args: &[&str], timeout: Duration) -> Result<String, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    // Read both pipes on their own threads, so a chatty command cannot block on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{program} did not finish within {} s and was killed", timeout.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for {program}: {e}")),
        }
    };
    let (stdout, stderr) = (stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default());
    if status.success() {
        Ok(stdout)
    } else {
        let said = if stderr.trim().is_empty() { stdout.trim() } else { stderr.trim() };
        Err(format!("{status}: {said}"))
    }
}

/// Whether `program args` succeeds within `timeout`.
pub(crate) fn run_ok(program: &str, args: &[&str], timeout: Duration) -> bool {
    run(program, args, timeout).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_failures_and_deadlines_are_reported() {
        assert_eq!(run("sh", &["-c", "echo hi"], Duration::from_secs(5)).unwrap(), "hi\n");
        let failed = run("sh", &["-c", "echo nope >&2; exit 3"], Duration::from_secs(5)).unwrap_err();
        assert!(failed.contains("nope") && failed.contains('3'), "{failed}");
        let started = Instant::now();
        let hung = run("sleep", &["10"], Duration::from_millis(300)).unwrap_err();
        assert!(hung.contains("killed") && started.elapsed() < Duration::from_secs(5), "{hung}");
    }
}
