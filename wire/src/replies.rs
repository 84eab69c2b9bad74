//! What every end that answers requests shares: reply types, error contents, and which shell
//! requests a Jupyter kernel serves.

use serde_json::{json, Value};

/// `<x>_reply` for `<x>_request`; other types get `_reply` appended.
pub fn reply_type(msg_type: &str) -> String {
    match msg_type.strip_suffix("_request") {
        Some(stem) => format!("{stem}_reply"),
        None => format!("{msg_type}_reply"),
    }
}

/// The content of an error reply (`status: error`), with one readable traceback line. Without
/// `status`, it is also the content of an iopub `error` output.
pub fn error_content(ename: &str, evalue: &str) -> Value {
    json!({
        "status": "error",
        "ename": ename,
        "evalue": evalue,
        "traceback": [format!("{ename}: {evalue}")],
    })
}

/// The shell requests a Jupyter kernel serves, each with whether it answers with a reply (the
/// comm messages get none). A relay passes these on and answers anything else itself.
pub const KERNEL_SHELL_REQUESTS: &[(&str, bool)] = &[
    ("execute_request", true),
    ("kernel_info_request", true),
    ("complete_request", true),
    ("inspect_request", true),
    ("is_complete_request", true),
    ("history_request", true),
    ("comm_info_request", true),
    ("comm_open", false),
    ("comm_msg", false),
    ("comm_close", false),
];

/// Whether a kernel serves `msg_type` on shell, and if so whether it replies.
pub fn kernel_shell_request(msg_type: &str) -> Option<bool> {
    KERNEL_SHELL_REQUESTS
        .iter()
        .find(|(name, _)| *name == msg_type)
        .map(|&(_, replies)| replies)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_types() {
        assert_eq!(reply_type("execute_request"), "execute_reply");
        assert_eq!(reply_type("apply_request"), "apply_reply");
        assert_eq!(reply_type("foo"), "foo_reply");
    }

    #[test]
    fn kernel_requests() {
        assert_eq!(kernel_shell_request("execute_request"), Some(true));
        assert_eq!(kernel_shell_request("comm_msg"), Some(false));
        assert_eq!(kernel_shell_request("foo_request"), None);
        assert_eq!(error_content("E", "v")["traceback"][0], "E: v");
    }
}
