//! The control socket: a Unix stream socket served by the daemon's loop.
//!
//! This module owns the socket file and the connections' bytes: creating
//! the socket safely, accepting, reading lines (with any descriptors passed
//! alongside), queueing responses, and enforcing the limits that keep a
//! slow, silent or hostile client from stalling the loop or the other
//! clients: a bounded line length, a bounded number of connections (the
//! longest-idle one is closed to make room), and an idle timeout. What a
//! request *means* is decided in `daemon/mod.rs`.

use std::collections::VecDeque;
use std::fs;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};

use crate::protocol::{MAX_FDS, MAX_LINE};
use crate::sys::{self, PeerCred};

/// How many connections may be open at once; at the cap, the connection
/// idle the longest is closed to admit a new one.
pub const MAX_CONNECTIONS: usize = 256;

/// A connection that sends nothing for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The most response bytes queued for one client that does not read.
const MAX_PENDING_OUTPUT: usize = 4 * 1024 * 1024;

/// The listening socket. Its file is removed when it is dropped, if it is
/// still the one this daemon created.
#[derive(Debug)]
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
    inode: u64,
}

impl ControlSocket {
    /// Creates the socket at `path`.
    ///
    /// The directory is created if missing (0755 as root so users can
    /// reach the socket, 0700 otherwise) and must be a real directory owned
    /// by us or root and writable by nobody else, so a planted symlink or a
    /// directory another user controls is refused. A socket file left by a
    /// crashed daemon (nobody accepts on it) is replaced; a live daemon on
    /// it is an error, and so is any other kind of file.
    pub fn bind(path: &Path) -> io::Result<ControlSocket> {
        let root = nix::unistd::geteuid().is_root();
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        prepare_dir(dir, root)?;
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!(
                            "{}: another tetherd is already serving this socket",
                            path.display()
                        ),
                    ));
                }
                // Stale: left by a daemon that did not exit cleanly.
                fs::remove_file(path)?;
            }
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{}: exists and is not a socket; refusing to replace it",
                        path.display()
                    ),
                ))
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        let listener = UnixListener::bind(path)?;
        // Anyone may connect; what they may do is decided per request from
        // the kernel's peer credentials. A daemon not running as root
        // serves its own user only.
        let mode = if root { 0o666 } else { 0o600 };
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
        let inode = fs::symlink_metadata(path)?.ino();
        Ok(ControlSocket {
            listener,
            path: path.to_owned(),
            inode,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Registers the listener under `token`.
    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(&mut self.listener, token, Interest::READABLE)
    }

    /// Accepts one pending connection, if any.
    pub fn accept(&self) -> io::Result<Option<UnixStream>> {
        match self.listener.accept() {
            Ok((stream, _)) => Ok(Some(stream)),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(err) => Err(err),
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        if let Ok(meta) = fs::symlink_metadata(&self.path) {
            if meta.ino() == self.inode {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

fn prepare_dir(dir: &Path, root: bool) -> io::Result<()> {
    let mode = if root { 0o755 } else { 0o700 };
    match fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)?,
        Err(err) => return Err(err),
    }
    let meta = fs::symlink_metadata(dir)?;
    let me = nix::unistd::geteuid().as_raw();
    if !meta.file_type().is_dir() {
        return Err(io::Error::other(format!(
            "{}: the socket directory is not a directory (a symlink?); refusing to use it",
            dir.display()
        )));
    }
    if meta.uid() != me && meta.uid() != 0 {
        return Err(io::Error::other(format!(
            "{}: the socket directory is owned by uid {}, not by this daemon's uid {me} or root",
            dir.display(),
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0 {
        return Err(io::Error::other(format!(
            "{}: the socket directory is writable by others (mode {:04o}); make it 0755 or 0700",
            dir.display(),
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// A request line with the descriptors that came with it.
#[derive(Debug)]
pub struct Incoming {
    /// The line, without its newline.
    pub line: Vec<u8>,
    /// Descriptors passed with it.
    pub fds: Vec<OwnedFd>,
    /// Whether the line was longer than [`MAX_LINE`] (then it is cut and
    /// must be refused), or descriptors were lost.
    pub oversized: bool,
    /// Whether the input ended in the middle of this line (no newline
    /// before the end of the stream): refused, never guessed at.
    pub incomplete: bool,
}

/// One client connection.
#[derive(Debug)]
pub struct Conn {
    stream: UnixStream,
    /// Who is on the other end.
    pub peer: PeerCred,
    rbuf: Vec<u8>,
    fds: Vec<OwnedFd>,
    /// Bytes of an oversized line still being skipped.
    skipping: bool,
    fds_lost: bool,
    wbuf: VecDeque<u8>,
    /// When it last sent something (for the idle timeout and eviction).
    pub last_active: Instant,
    /// Reading is over (end of stream or error); close once written.
    pub read_closed: bool,
}

impl Conn {
    /// Wraps an accepted stream; fails if the kernel cannot tell who it is.
    pub fn new(stream: UnixStream) -> io::Result<Conn> {
        let peer = sys::peer_credentials(&stream)?;
        Ok(Conn {
            stream,
            peer,
            rbuf: Vec::new(),
            fds: Vec::new(),
            skipping: false,
            fds_lost: false,
            wbuf: VecDeque::new(),
            last_active: Instant::now(),
            read_closed: false,
        })
    }

    /// Registers the connection under `token`.
    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(
            &mut self.stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    /// Deregisters the connection.
    pub fn deregister(&mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.stream);
    }

    /// Reads what is available and returns the complete lines. Never
    /// blocks. mio is edge-triggered, so a reader must go on until
    /// WouldBlock; to keep one flooding client from starving the others,
    /// at most `budget` reads are made, and the second value says whether
    /// input is left (the caller comes back to it after the others).
    pub fn read_lines(&mut self, budget: usize) -> (Vec<Incoming>, bool) {
        let mut lines = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        for _ in 0..budget {
            match sys::recv_with_fds(&self.stream, &mut buf, MAX_FDS) {
                Ok((0, _, _)) => {
                    self.read_closed = true;
                    if !self.rbuf.is_empty() || self.skipping {
                        self.rbuf.clear();
                        self.skipping = false;
                        lines.push(Incoming {
                            line: Vec::new(),
                            fds: std::mem::take(&mut self.fds),
                            oversized: false,
                            incomplete: true,
                        });
                    }
                    return (lines, false);
                }
                Ok((n, fds, truncated)) => {
                    self.last_active = Instant::now();
                    self.fds_lost |= truncated;
                    for fd in fds {
                        if self.fds.len() < MAX_FDS {
                            self.fds.push(fd);
                        } else {
                            self.fds_lost = true;
                        }
                    }
                    self.take_lines(buf.get(..n).unwrap_or_default(), &mut lines);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return (lines, false),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.read_closed = true;
                    return (lines, false);
                }
            }
            // Stop reading from a client whose answers pile up unread.
            if self.wbuf.len() > MAX_PENDING_OUTPUT {
                self.read_closed = true;
                return (lines, false);
            }
        }
        (lines, true)
    }

    fn take_lines(&mut self, mut data: &[u8], out: &mut Vec<Incoming>) {
        while let Some(pos) = data.iter().position(|&b| b == b'\n') {
            let (head, rest) = data.split_at(pos);
            data = rest.get(1..).unwrap_or_default();
            if self.skipping {
                // The end of an oversized line: refuse it now.
                self.skipping = false;
                out.push(Incoming {
                    line: Vec::new(),
                    fds: std::mem::take(&mut self.fds),
                    oversized: true,
                    incomplete: false,
                });
                continue;
            }
            if self.rbuf.len() + head.len() > MAX_LINE {
                self.rbuf.clear();
                out.push(Incoming {
                    line: Vec::new(),
                    fds: std::mem::take(&mut self.fds),
                    oversized: true,
                    incomplete: false,
                });
                continue;
            }
            let mut line = std::mem::take(&mut self.rbuf);
            line.extend_from_slice(head);
            out.push(Incoming {
                line,
                fds: std::mem::take(&mut self.fds),
                oversized: std::mem::take(&mut self.fds_lost),
                incomplete: false,
            });
        }
        if self.skipping {
            return;
        }
        if self.rbuf.len() + data.len() > MAX_LINE {
            // Too long already: drop what we have and skip to the newline.
            self.rbuf = Vec::new();
            self.skipping = true;
        } else {
            self.rbuf.extend_from_slice(data);
        }
    }

    /// Queues one response line.
    pub fn queue(&mut self, line: &[u8]) {
        self.wbuf.extend(line);
        self.wbuf.push_back(b'\n');
    }

    /// Writes what the socket takes now. Returns false if the connection
    /// broke.
    pub fn flush(&mut self) -> bool {
        while !self.wbuf.is_empty() {
            let (front, _) = self.wbuf.as_slices();
            match self.stream.write(front) {
                Ok(0) => return false,
                Ok(n) => {
                    self.wbuf.drain(..n);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return true,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        true
    }

    /// Whether responses are still queued.
    pub fn has_output(&self) -> bool {
        !self.wbuf.is_empty()
    }
}
