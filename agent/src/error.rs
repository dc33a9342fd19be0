//! The agent's error type and its mapping onto ttrpc status codes.

use ttrpc::{Code, Error as TtrpcError};

/// Everything an agent request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The request itself is malformed (bad id, bad JSON, bad path).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A container or process that the request names does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A container with that id already exists.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The object is in the wrong state for the request.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The container engine (youki's libcontainer) refused or failed.
    #[error("container engine: {0}")]
    Engine(String),
    /// A cgroup operation failed.
    #[error("cgroup: {0}")]
    Cgroup(String),
    /// A system call or file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the agent was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl From<husk_netlink::Error> for AgentError {
    fn from(e: husk_netlink::Error) -> Self {
        match e {
            husk_netlink::Error::Refused { what, source } => AgentError::Io {
                context: what,
                source,
            },
            husk_netlink::Error::Socket(source) => AgentError::io("rtnetlink socket", source),
            other => AgentError::io(
                "rtnetlink",
                std::io::Error::new(std::io::ErrorKind::InvalidData, other.to_string()),
            ),
        }
    }
}

impl AgentError {
    /// Wraps an I/O error with what the agent was doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        AgentError::Io {
            context: context.into(),
            source,
        }
    }

    /// Wraps an errno with what the agent was doing.
    pub fn errno(context: impl Into<String>, errno: nix::errno::Errno) -> Self {
        Self::io(context, std::io::Error::from(errno))
    }

    fn code(&self) -> Code {
        match self {
            AgentError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            AgentError::NotFound(_) => Code::NOT_FOUND,
            AgentError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            AgentError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            AgentError::Engine(_) | AgentError::Cgroup(_) | AgentError::Io { .. } => Code::INTERNAL,
        }
    }
}

impl From<AgentError> for TtrpcError {
    fn from(err: AgentError) -> Self {
        TtrpcError::RpcStatus(ttrpc::get_status(err.code(), err.to_string()))
    }
}

impl From<libcontainer::error::LibcontainerError> for AgentError {
    fn from(err: libcontainer::error::LibcontainerError) -> Self {
        AgentError::Engine(err.to_string())
    }
}

/// Result of agent operations.
pub type Result<T> = std::result::Result<T, AgentError>;
