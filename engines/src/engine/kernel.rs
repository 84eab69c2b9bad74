//! The engine's kernel: launched from a kernelspec, ready when it can run code, stopped on the
//! way out.
//!
//! Output written to the kernel process's file descriptors (`os.system('echo hi')`, a C
//! extension's `printf`) must reach the user. ipykernel ≥ 6 forwards it itself (its `OutStream`
//! watches fds 1 and 2 and publishes what arrives as `stream` messages), so for ipykernel the
//! engine does nothing — capturing as well would show it twice. Any other kernel is launched with
//! its stdout and stderr piped; reader tasks turn what arrives into [`Chunk`]s that the event loop
//! publishes as `stream` messages.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use super::support::{self, Attach};
use super::EngineError;
use crate::client::KernelClient;
use crate::kernelspec::KernelSpec;
use crate::launch::{Exit, KernelOutput, KernelProcess, LaunchOptions};

/// How long the kernel may take from launch to answering `kernel_info_request`.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long its sockets may take to accept a connection.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a kernel asked to shut down may take before it is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How many output chunks may wait for the event loop before the readers (and so the kernel,
/// once its pipe is full) wait.
const OUTPUT_CHUNKS: usize = 64;
/// How much one read of a pipe takes at most.
const READ_SIZE: usize = 8192;

/// Which of the kernel's streams a chunk came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum StreamName {
    Stdout,
    Stderr,
}

impl StreamName {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            StreamName::Stdout => "stdout",
            StreamName::Stderr => "stderr",
        }
    }
}

/// Text the kernel process wrote to one of its file descriptors.
#[derive(Debug)]
pub(super) struct Chunk {
    pub name: StreamName,
    pub text: String,
}

/// A running, ready kernel.
pub(super) struct EngineKernel {
    pub process: KernelProcess,
    pub client: KernelClient,
    /// What the kernel writes to its fds, when the engine forwards it (not ipykernel).
    pub output: Option<mpsc::Receiver<Chunk>>,
}

/// Whether the kernel forwards output written to its file descriptors itself. ipykernel ≥ 6 does
/// (`IPKernelApp.capture_fd_output`, on by default).
pub(super) fn forwards_fd_output(spec: &KernelSpec) -> bool {
    spec.argv.iter().any(|arg| arg.contains("ipykernel"))
}

impl EngineKernel {
    /// Launches `spec` and waits until it can run code: it has answered `kernel_info_request` and
    /// its iopub is subscribed. A Python kernel then gets the engine support (see
    /// [`support`]), attached under `attach`; a kernel that cannot take it still serves.
    pub(super) async fn start(spec: KernelSpec, attach: Attach) -> Result<Self, EngineError> {
        let kernel = spec.name.clone();
        let capture_output = !forwards_fd_output(&spec);
        let options = LaunchOptions {
            capture_output,
            ..LaunchOptions::default()
        };
        let mut process = KernelProcess::launch(spec, &options)
            .await
            .map_err(|source| EngineError::Launch {
                kernel: kernel.clone(),
                source,
            })?;
        let mut output = process.take_output().map(spawn_readers);
        let failed = |reason: String| EngineError::KernelStart {
            kernel: kernel.clone(),
            reason,
        };

        let outcome = {
            let ready = async {
                let label = format!("kernel {}", process.pid());
                let mut client =
                    KernelClient::connect(process.connection(), SOCKET_TIMEOUT, &label)
                        .await
                        .map_err(|e| e.to_string())?;
                let info = client
                    .wait_ready(STARTUP_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())?;
                if support::is_python(&info) {
                    match support::install(&mut client, &attach).await {
                        Ok(()) => tracing::info!("engine support attached"),
                        Err(reason) => tracing::warn!(
                            %reason,
                            "no engine support in the kernel: apply requests will be refused"
                        ),
                    }
                }
                Ok::<_, String>(client)
            };
            let exited = process.exited();
            tokio::pin!(ready, exited);
            loop {
                tokio::select! {
                    ready = &mut ready => break ready.map_err(failed),
                    exit = &mut exited => {
                        break Err(failed(format!("it exited while starting ({exit})")));
                    }
                    // Keep the pipes flowing: a kernel blocked on a full pipe is never ready.
                    Some(chunk) = recv_chunk(output.as_mut()) => tracing::info!(
                        stream = chunk.name.as_str(),
                        text = %chunk.text.trim_end(),
                        "kernel output while starting"
                    ),
                }
            }
        };
        match outcome {
            Ok(client) => {
                tracing::info!(kernel = %kernel, pid = process.pid(), "kernel ready");
                Ok(EngineKernel {
                    process,
                    client,
                    output,
                })
            }
            Err(error) => {
                process.kill().await;
                Err(error)
            }
        }
    }

    /// The kernelspec's name.
    pub(super) fn name(&self) -> &str {
        &self.process.spec().name
    }

    /// Interrupts the running code: with no signal (or SIGINT) the kernelspec's way, SIGINT to
    /// the kernel's process group or `interrupt_request` on its control channel; any other
    /// signal is sent to the kernel's process group.
    pub(super) async fn interrupt(&self, signal: Option<&str>) {
        match signal.map(parse_signal) {
            Some(Ok(nix::sys::signal::Signal::SIGINT)) | None => {}
            Some(Ok(signal)) => {
                if let Err(error) = self.process.signal(signal) {
                    tracing::warn!(%error, "could not signal the kernel");
                }
                return;
            }
            Some(Err(name)) => {
                tracing::warn!(signal = %name, "unknown signal; interrupting with SIGINT");
            }
        }
        match self.process.interrupt() {
            Ok(true) => {}
            Ok(false) => {
                let request = self
                    .client
                    .session
                    .message("interrupt_request", &serde_json::json!({}));
                let _ = self.client.control.send(request).await;
            }
            Err(error) => tracing::warn!(%error, "could not interrupt the kernel"),
        }
    }

    /// Asks the kernel to shut down and makes sure it has: what is left after a grace period is
    /// killed with its process group. Returns once the kernel has exited.
    pub(super) async fn shutdown(self) -> Exit {
        if let Some(exit) = self.process.exit_status() {
            return exit;
        }
        let request = self
            .client
            .session
            .message("shutdown_request", &serde_json::json!({ "restart": false }));
        let _ = self.client.control.send(request).await;
        let exit = self.process.finish(SHUTDOWN_GRACE).await;
        tracing::info!(pid = self.process.pid(), %exit, "kernel stopped");
        exit
    }
}

/// Waits on an output channel that may not exist; without one, never resolves.
pub(super) async fn recv_chunk(output: Option<&mut mpsc::Receiver<Chunk>>) -> Option<Chunk> {
    match output {
        Some(output) => output.recv().await,
        None => std::future::pending().await,
    }
}

/// Starts one reader task per pipe; the channel closes when both pipes have reached end of file.
fn spawn_readers(output: KernelOutput) -> mpsc::Receiver<Chunk> {
    let (tx, rx) = mpsc::channel(OUTPUT_CHUNKS);
    tokio::spawn(read_pipe(output.stdout, StreamName::Stdout, tx.clone()));
    tokio::spawn(read_pipe(output.stderr, StreamName::Stderr, tx));
    rx
}

async fn read_pipe<R: AsyncRead + Unpin>(mut pipe: R, name: StreamName, tx: mpsc::Sender<Chunk>) {
    let mut buffer = vec![0u8; READ_SIZE];
    let mut pending = Vec::new();
    loop {
        let read = match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => 0,
            Ok(read) => read,
        };
        if read == 0 {
            if !pending.is_empty() {
                let text = String::from_utf8_lossy(&pending).into_owned();
                let _ = tx.send(Chunk { name, text }).await;
            }
            return;
        }
        pending.extend_from_slice(&buffer[..read]);
        let text = take_utf8(&mut pending);
        if !text.is_empty() && tx.send(Chunk { name, text }).await.is_err() {
            return;
        }
    }
}

/// Decodes the bytes of `pending` as UTF-8 (invalid sequences become U+FFFD), leaving behind
/// only a character cut off at the end, to be completed by the next read.
fn take_utf8(pending: &mut Vec<u8>) -> String {
    let mut text = String::new();
    let mut rest: &[u8] = pending;
    loop {
        match std::str::from_utf8(rest) {
            Ok(valid) => {
                text.push_str(valid);
                rest = &[];
                break;
            }
            Err(error) => {
                let (valid, after) = rest.split_at(error.valid_up_to());
                text.push_str(&String::from_utf8_lossy(valid));
                match error.error_len() {
                    Some(bad) => {
                        text.push(char::REPLACEMENT_CHARACTER);
                        rest = &after[bad..];
                    }
                    // An incomplete character at the end: keep it.
                    None => {
                        rest = after;
                        break;
                    }
                }
            }
        }
    }
    let keep = rest.len();
    let cut = pending.len() - keep;
    pending.drain(..cut);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_is_decoded_across_reads() {
        let cases: &[(&[u8], &str, &[u8])] = &[
            (b"hello\n", "hello\n", b""),
            ("é".as_bytes(), "é", b""),
            (&[b'a', 0xC3], "a", &[0xC3]),
            (&[0xE2, 0x82], "", &[0xE2, 0x82]),
            (&[b'x', 0xFF, b'y'], "x\u{FFFD}y", b""),
            (&[0xFF, 0xE2, 0x82], "\u{FFFD}", &[0xE2, 0x82]),
            (b"", "", b""),
        ];
        for (input, text, left) in cases {
            let mut pending = input.to_vec();
            assert_eq!(take_utf8(&mut pending), *text, "{input:?}");
            assert_eq!(pending, *left, "{input:?}");
        }
        let mut pending = vec![0xE2, 0x82];
        pending.push(0xAC);
        assert_eq!(take_utf8(&mut pending), "€");
    }

    #[tokio::test]
    async fn pipes_become_chunks_until_end_of_file() {
        let (tx, mut rx) = mpsc::channel(4);
        let input: &[u8] = "one\ntwo é\n".as_bytes();
        read_pipe(input, StreamName::Stderr, tx).await;
        let mut text = String::new();
        while let Some(chunk) = rx.recv().await {
            assert_eq!(chunk.name, StreamName::Stderr);
            text.push_str(&chunk.text);
        }
        assert_eq!(text, "one\ntwo é\n");
    }
}

/// A signal by name (`SIGTERM`, `TERM`) or number (`15`).
fn parse_signal(text: &str) -> Result<nix::sys::signal::Signal, String> {
    use std::str::FromStr;
    let name = text.trim().to_ascii_uppercase();
    if let Ok(number) = name.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(number).map_err(|_| text.to_owned());
    }
    let full = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    nix::sys::signal::Signal::from_str(&full).map_err(|_| text.to_owned())
}

#[cfg(test)]
mod signal_tests {
    use super::parse_signal;
    use nix::sys::signal::Signal;

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(parse_signal("SIGTERM"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("term"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("2"), Ok(Signal::SIGINT));
        assert!(parse_signal("SIGNOPE").is_err());
        assert!(parse_signal("999").is_err());
    }
}
