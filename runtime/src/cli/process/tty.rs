//! Host pseudo-terminals for container processes with `terminal: true`.
//!
//! With `--console-socket`, the proxy makes a pty pair, sends the master to
//! the caller (containerd's shim, `husk exec -t`'s own caller) over the Unix
//! socket as runc does, and keeps the slave as its controlling terminal:
//! what the caller writes to the master reaches the guest process's stdin,
//! its output goes back through the slave, and a resize of the master
//! arrives as SIGWINCH. The slave is raw, because the guest's own terminal
//! already does echo and line editing.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::pty::{openpty, Winsize};
use nix::sys::socket::{
    connect, sendmsg, socket, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr,
};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios};

/// Errors setting up a terminal.
#[derive(Debug, thiserror::Error)]
#[error("terminal: {0}")]
pub struct Error(String);

fn err(what: &str, e: impl std::fmt::Display) -> Error {
    Error(format!("{what}: {e}"))
}

/// Makes a pty pair, sends the master over `console_socket`, and returns
/// the slave, made this process's controlling terminal and raw.
pub fn console_socket_pty(console_socket: &Path) -> Result<OwnedFd, Error> {
    let pty = openpty(None, None).map_err(|e| err("openpty", e))?;
    send_fd(console_socket, pty.master.as_fd())?;
    drop(pty.master);
    // SAFETY: TIOCSCTTY takes an int argument; the fd is open. The caller
    // is a session leader without a terminal (the proxy starts with setsid).
    if unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCSCTTY, 0) } != 0 {
        return Err(err(
            "make the pty the controlling terminal",
            std::io::Error::last_os_error(),
        ));
    }
    set_raw(pty.slave.as_fd())?;
    Ok(pty.slave)
}

/// Sends `fd` over the Unix socket at `path`, runc's console-socket protocol.
pub fn send_fd(path: &Path, fd: BorrowedFd<'_>) -> Result<(), Error> {
    let sock = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| err("console socket", e))?;
    let addr =
        UnixAddr::new(path).map_err(|e| err(&format!("console socket {}", path.display()), e))?;
    connect(sock.as_raw_fd(), &addr)
        .map_err(|e| err(&format!("connect console socket {}", path.display()), e))?;
    let fds = [fd.as_raw_fd()];
    let name = b"/dev/ptmx";
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(name)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| err("send the pty over the console socket", e))?;
    Ok(())
}

/// Puts a terminal in raw mode; returns its previous settings.
pub fn set_raw(fd: BorrowedFd<'_>) -> Result<Termios, Error> {
    let saved = tcgetattr(fd).map_err(|e| err("tcgetattr", e))?;
    let mut raw = saved.clone();
    cfmakeraw(&mut raw);
    tcsetattr(fd, SetArg::TCSANOW, &raw).map_err(|e| err("tcsetattr", e))?;
    Ok(saved)
}

/// Restores settings [`set_raw`] returned.
pub fn restore(fd: BorrowedFd<'_>, saved: &Termios) {
    let _ = tcsetattr(fd, SetArg::TCSANOW, saved);
}

/// The window size of a terminal, as (rows, cols); `None` if not a terminal
/// or never sized.
pub fn window_size(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
    let mut size = Winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one Winsize into the pointer given.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
    (rc == 0 && size.ws_row > 0 && size.ws_col > 0).then_some((size.ws_row, size.ws_col))
}

/// Whether `fd` is a terminal.
pub fn is_terminal(fd: BorrowedFd<'_>) -> bool {
    nix::unistd::isatty(fd.as_raw_fd()).unwrap_or(false)
}
