//! The Jupyter wire format, with no sockets and no runtime.
//!
//! Every link in Parallax (notebook ↔ parallax kernel, parallax kernel ↔ local kernel, engine ↔
//! kernel, client ↔ controller ↔ engine) speaks the same multipart format:
//!
//! ```text
//! [identity ...] "<IDS|MSG>" signature header parent_header metadata content [buffer ...]
//! ```
//!
//! # Layout
//!
//! - [`sign`]: HMAC-SHA256 over the four JSON frames, verified in constant time.
//! - [`header`]: the typed message header and the date format clients accept.
//! - [`message`]: [`Message`], which keeps each JSON frame as the bytes that arrived so that a relay
//!   can re-parent and re-sign a message without re-serialising (or losing fields of) its content.
//! - [`codec`]: [`Session`], which decodes received frames into a [`Message`] (every malformed input
//!   is a [`DecodeError`], never a panic) and encodes messages into signed frames.
//! - [`pack`]: several small messages for one peer in one frame (between Parallax's own ends).
//! - [`connection`]: connection files (read, write with mode 0600) and channel endpoints.
//! - [`profile`]: a cluster profile's folder and files (`$PARALLAX_DIR/profile_<name>/`).
//! - [`cluster`]: the cluster protocol's message contents (client, controller, engine).
//! - [`replies`]: reply types, error contents, the shell requests a kernel serves.
//! - `fuzzing` (tests and the `fuzzing` feature only): the checks of the fuzz targets in `fuzz/`.

pub mod cluster;
pub mod codec;
pub mod connection;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod header;
pub mod message;
pub mod pack;
pub mod profile;
pub mod replies;
pub mod sign;

pub use codec::{DecodeError, Part, Session, DELIMITER};
pub use connection::{
    endpoint, parse_connection_file, read_connection_file, write_connection_file, Channel,
    ConnectionError, ConnectionInfo, Transport,
};
pub use header::{now_iso8601, Header, PROTOCOL_VERSION};
pub use message::{to_json_bytes, Message, ParentRef};
pub use sign::Signer;

/// The bytes of a frame, shared without copying between messages.
pub use bytes::Bytes;
