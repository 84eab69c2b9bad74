//! Connection files: the JSON that tells each end of a kernel link where the other is and which
//! key signs its messages.
//!
//! The type is `jupyter_protocol`'s [`ConnectionInfo`]; this module adds reading with clear errors
//! ([`parse_connection_file`] is the part without I/O),
//! writing with mode 0600 (the key is a secret), and channel endpoints.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub use jupyter_protocol::{ConnectionInfo, Transport};

/// Why a connection file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("cannot read connection file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("connection file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "connection file {path} uses signature scheme {scheme:?}; only hmac-sha256 is supported"
    )]
    Scheme { path: PathBuf, scheme: String },
    #[error("cannot write connection file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Reads and checks a connection file.
pub fn read_connection_file(path: &Path) -> Result<ConnectionInfo, ConnectionError> {
    let text = fs::read(path).map_err(|source| ConnectionError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_connection_file(path, &text)
}

/// Parses and checks the bytes of a connection file; `path` only names it in errors.
pub fn parse_connection_file(path: &Path, text: &[u8]) -> Result<ConnectionInfo, ConnectionError> {
    let info: ConnectionInfo =
        serde_json::from_slice(text).map_err(|source| ConnectionError::Parse {
            path: path.to_owned(),
            source,
        })?;
    if !info.key.is_empty() && info.signature_scheme != "hmac-sha256" {
        return Err(ConnectionError::Scheme {
            path: path.to_owned(),
            scheme: info.signature_scheme,
        });
    }
    Ok(info)
}

/// Writes a connection file readable by its owner only.
pub fn write_connection_file(path: &Path, info: &ConnectionInfo) -> Result<(), ConnectionError> {
    let error = |source| ConnectionError::Write {
        path: path.to_owned(),
        source,
    };
    let text = serde_json::to_vec_pretty(info).map_err(|e| error(e.into()))?;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(error)?;
    file.write_all(&text).map_err(error)?;
    Ok(())
}

/// The five channels of a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    Shell,
    Control,
    Stdin,
    IoPub,
    Heartbeat,
}

/// The ZMQ endpoint of `channel`: `tcp://ip:port`, or `ipc://path-N` for the IPC transport.
pub fn endpoint(info: &ConnectionInfo, channel: Channel) -> String {
    match channel {
        Channel::Shell => info.shell_url(),
        Channel::Control => info.control_url(),
        Channel::Stdin => info.stdin_url(),
        Channel::IoPub => info.iopub_url(),
        Channel::Heartbeat => info.hb_url(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn info() -> ConnectionInfo {
        ConnectionInfo {
            ip: "127.0.0.1".into(),
            transport: Transport::TCP,
            shell_port: 1,
            iopub_port: 2,
            stdin_port: 3,
            control_port: 4,
            hb_port: 5,
            key: "k".into(),
            signature_scheme: "hmac-sha256".into(),
            kernel_name: None,
        }
    }

    #[test]
    fn written_files_are_private_and_read_back() {
        let dir = std::env::temp_dir().join(format!("parallax-wire-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("kernel.json");
        write_connection_file(&path, &info()).expect("write");
        let mode = fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(read_connection_file(&path).expect("read"), info());
        assert_eq!(endpoint(&info(), Channel::Heartbeat), "tcp://127.0.0.1:5");
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn unreadable_and_invalid_files_are_errors() {
        let missing = Path::new("/nonexistent/parallax/kernel.json");
        assert!(matches!(
            read_connection_file(missing),
            Err(ConnectionError::Read { .. })
        ));
        let dir = std::env::temp_dir().join(format!("parallax-wire-bad-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("bad.json");
        fs::write(&path, b"{\"ip\": 3}").expect("write");
        assert!(matches!(
            read_connection_file(&path),
            Err(ConnectionError::Parse { .. })
        ));
        fs::remove_dir_all(&dir).ok();
    }
}
