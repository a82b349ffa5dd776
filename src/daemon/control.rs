//! The control socket: a Unix stream socket served by the daemon's loop.
//!
//! This module owns the socket file and the connections' bytes: creating
//! the socket safely, accepting, reading lines (with any descriptors passed
//! alongside), queueing responses, and enforcing the limits that keep a
//! slow, silent or hostile client from stalling the loop or the other
//! clients: a bounded line length, a bounded number of connections (the
//! longest-idle one is closed to make room), and an idle timeout. What a
//! request *means* is decided in `requests`, and how much of a connection's
//! work is done when in `serve`.

use std::collections::VecDeque;
use std::fs;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};

use super::closer::Closer;
use crate::protocol::{MAX_FDS, MAX_LINE};
use crate::sys::{self, PeerCred};

/// How many connections may be open at once; at the cap, the connection
/// idle the longest is closed to admit a new one.
pub const MAX_CONNECTIONS: usize = 256;

/// A connection that sends nothing for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

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
                // A non-blocking connect: a daemon that is alive but
                // does not accept (its backlog full) answers EAGAIN rather
                // than keeping this start-up waiting.
                let live = match UnixStream::connect(path) {
                    Ok(_) => true,
                    Err(err) => err.kind() == io::ErrorKind::WouldBlock,
                };
                if live {
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

/// Why a request line is refused before it is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// A complete line within the limits.
    Ok,
    /// Longer than [`MAX_LINE`] (it was cut and skipped).
    TooLong,
    /// More descriptors than [`MAX_FDS`] came with it, or the kernel cut
    /// the control data (some were dropped).
    TooManyFds,
    /// A descriptor other than a pidfd came with it (it was closed
    /// off the loop, unread).
    NotPidfd,
    /// The input ended before its newline.
    Incomplete,
}

/// A request line with the descriptors that came with it.
#[derive(Debug)]
pub struct Incoming {
    /// The line, without its newline.
    pub line: Vec<u8>,
    /// Pidfds passed with it (nothing else is ever kept).
    pub fds: Vec<OwnedFd>,
    /// Whether it may be parsed, or why it is refused unread.
    pub framing: Framing,
}

/// One client connection.
///
/// What a client can make the daemon hold for it is bounded: its input is
/// read only while no complete request waits to be handled and its queued
/// answers are under [`OUTPUT_LOW_WATER`] (so a client that pipelines
/// requests and never reads its answers stops being read, and the kernel's
/// socket buffer pushes back on it), a line is at most [`MAX_LINE`] bytes,
/// and a descriptor other than a pidfd is never kept: it goes to the
/// closer, which closes it away from the loop.
#[derive(Debug)]
pub struct Conn {
    stream: UnixStream,
    /// Who is on the other end.
    pub peer: PeerCred,
    /// Input not yet split into lines.
    rbuf: Vec<u8>,
    /// Complete lines waiting to be handled (at most one read's worth).
    lines: VecDeque<Incoming>,
    /// Pidfds passed with the line being read.
    fds: Vec<OwnedFd>,
    /// Bytes of an oversized line still being skipped.
    skipping: bool,
    /// Why the line being read is refused already, if it is.
    refusal: Option<Framing>,
    wbuf: VecDeque<u8>,
    /// When it last sent something (for the idle timeout and eviction).
    pub last_active: Instant,
    /// Reading is over (end of stream or error); close once written.
    pub read_closed: bool,
    /// Bytes of answers made for it that wait for the commit.
    pub awaiting: usize,
    /// It reads the event stream: no idle timeout, no further requests.
    pub streaming: bool,
}

/// Answers queued for one connection above which its requests wait.
pub const OUTPUT_LOW_WATER: usize = 64 * 1024;

impl Conn {
    /// Wraps an accepted stream; fails if the kernel cannot tell who it is.
    pub fn new(stream: UnixStream) -> io::Result<Conn> {
        let peer = sys::peer_credentials(&stream)?;
        Ok(Conn {
            stream,
            peer,
            rbuf: Vec::new(),
            lines: VecDeque::new(),
            fds: Vec::new(),
            skipping: false,
            refusal: None,
            wbuf: VecDeque::new(),
            last_active: Instant::now(),
            read_closed: false,
            awaiting: 0,
            streaming: false,
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

    /// Deregisters the connection and gives up its socket, shut down so
    /// the client can queue nothing more in it.
    pub fn into_socket(mut self, registry: &Registry) -> OwnedFd {
        let _ = registry.deregister(&mut self.stream);
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        // Descriptors of a line not finished: pidfds, whose close cannot
        // block.
        drop(std::mem::take(&mut self.fds));
        OwnedFd::from(self.stream)
    }

    /// The next complete line, if one was read.
    pub fn next_line(&mut self) -> Option<Incoming> {
        self.lines.pop_front()
    }

    /// Whether a complete line waits to be handled.
    pub fn has_line(&self) -> bool {
        !self.lines.is_empty()
    }

    /// Reads once, if it may: only while no complete line waits and the
    /// queued answers are under [`OUTPUT_LOW_WATER`]. Never blocks.
    /// Descriptors other than pidfds go to `closer`. Returns whether the
    /// stream may hold more input (a read was made and was not the last).
    pub fn read_once(&mut self, closer: &Closer) -> bool {
        if self.read_closed || self.has_line() || self.wbuf.len() >= OUTPUT_LOW_WATER {
            return false;
        }
        let mut buf = [0u8; 16 * 1024];
        loop {
            match sys::recv_with_fds(&self.stream, &mut buf) {
                Ok(received) => {
                    let n = received.n;
                    self.take_fds(received.fds, received.truncated, closer);
                    if n == 0 {
                        self.end_of_input();
                        return false;
                    }
                    self.last_active = Instant::now();
                    self.take_lines(buf.get(..n).unwrap_or_default());
                    return true;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return false,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.read_closed = true;
                    return false;
                }
            }
        }
    }

    /// Keeps the pidfds of a message (up to [`MAX_FDS`] a line) and hands
    /// anything else to the closer: only a pidfd is known to close without
    /// blocking.
    fn take_fds(&mut self, fds: Vec<OwnedFd>, truncated: bool, closer: &Closer) {
        if truncated {
            self.refuse_line(Framing::TooManyFds);
        }
        for fd in fds {
            if !sys::is_process_descriptor(&fd) {
                closer.close(self.peer.uid, fd);
                self.refuse_line(Framing::NotPidfd);
            } else if self.fds.len() < MAX_FDS && self.refusal.is_none() {
                self.fds.push(fd);
            } else {
                // A pidfd: closing it cannot block.
                drop(fd);
                self.refuse_line(Framing::TooManyFds);
            }
        }
        if self.refusal.is_some() {
            self.fds.clear();
        }
    }

    fn refuse_line(&mut self, why: Framing) {
        if self.refusal.is_none() {
            self.refusal = Some(why);
        }
    }

    fn end_of_input(&mut self) {
        self.read_closed = true;
        if !self.rbuf.is_empty() || self.skipping || self.refusal.is_some() {
            self.rbuf.clear();
            self.skipping = false;
            self.refusal = None;
            self.fds.clear();
            self.lines.push_back(Incoming {
                line: Vec::new(),
                fds: Vec::new(),
                framing: Framing::Incomplete,
            });
        }
    }

    fn take_lines(&mut self, mut data: &[u8]) {
        while let Some(pos) = data.iter().position(|&b| b == b'\n') {
            let (head, rest) = data.split_at(pos);
            data = rest.get(1..).unwrap_or_default();
            let too_long = self.skipping || self.rbuf.len() + head.len() > MAX_LINE;
            self.skipping = false;
            let mut line = std::mem::take(&mut self.rbuf);
            let framing = match self.refusal.take() {
                Some(why) => why,
                None if too_long => Framing::TooLong,
                None => Framing::Ok,
            };
            if framing == Framing::Ok {
                line.extend_from_slice(head);
            } else {
                line = Vec::new();
            }
            self.lines.push_back(Incoming {
                line,
                fds: std::mem::take(&mut self.fds),
                framing,
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
        if self.wbuf.capacity() > OUTPUT_LOW_WATER {
            self.wbuf.shrink_to(OUTPUT_LOW_WATER);
        }
        true
    }

    /// Whether responses are still queued.
    pub fn has_output(&self) -> bool {
        !self.wbuf.is_empty()
    }

    /// Bytes of responses queued.
    pub fn output_len(&self) -> usize {
        self.wbuf.len()
    }
}

/// Closes a connection's socket: at once if nothing waits unread in it
/// (then its last close cannot block), else through the closer, since
/// descriptors queued in it would be closed with it.
pub fn close_socket(socket: OwnedFd, uid: u32, closer: &Closer) {
    match sys::pending_input(&socket) {
        Ok(0) => drop(socket),
        _ => closer.close(uid, socket),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn_pair() -> (Conn, std::os::unix::net::UnixStream) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (Conn::new(UnixStream::from_std(a)).unwrap(), b)
    }

    fn closer() -> (mio::Poll, Closer) {
        let poll = mio::Poll::new().unwrap();
        let waker = mio::Waker::new(poll.registry(), Token(1)).unwrap();
        (poll, Closer::new(waker))
    }

    fn framings(conn: &mut Conn, closer: &Closer) -> Vec<(Framing, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            while let Some(incoming) = conn.next_line() {
                out.push((incoming.framing, incoming.line));
            }
            if !conn.read_once(closer) && !conn.has_line() {
                return out;
            }
        }
    }

    #[test]
    fn lines_are_split_and_limits_enforced() {
        let (_poll, closer) = closer();
        let (mut conn, mut peer) = conn_pair();
        peer.write_all(b"one\ntwo\n").unwrap();
        let mut long = vec![b'x'; MAX_LINE + 10];
        long.push(b'\n');
        peer.write_all(&long).unwrap();
        peer.write_all(b"three\npartial").unwrap();
        drop(peer);
        let got = framings(&mut conn, &closer);
        assert_eq!(
            got,
            vec![
                (Framing::Ok, b"one".to_vec()),
                (Framing::Ok, b"two".to_vec()),
                (Framing::TooLong, Vec::new()),
                (Framing::Ok, b"three".to_vec()),
                (Framing::Incomplete, Vec::new()),
            ]
        );
        assert!(conn.read_closed);
    }

    #[test]
    fn a_waiting_line_stops_reading() {
        let (_poll, closer) = closer();
        let (mut conn, mut peer) = conn_pair();
        peer.write_all(b"a\n").unwrap();
        assert!(conn.read_once(&closer));
        peer.write_all(b"b\n").unwrap();
        // "a" is not handled yet: nothing more is read.
        assert!(!conn.read_once(&closer));
        assert_eq!(conn.next_line().unwrap().line, b"a");
        assert!(conn.read_once(&closer));
        assert_eq!(conn.next_line().unwrap().line, b"b");
    }

    #[test]
    fn queued_answers_stop_reading() {
        let (_poll, closer) = closer();
        let (mut conn, mut peer) = conn_pair();
        conn.queue(&vec![b'r'; OUTPUT_LOW_WATER]);
        peer.write_all(b"list\n").unwrap();
        assert!(!conn.read_once(&closer));
        assert!(!conn.has_line());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn only_pidfds_are_kept() {
        use std::os::fd::AsFd;
        let (_poll, closer) = closer();
        let (mut conn, peer) = conn_pair();
        let pidfd = sys::process_descriptor(i32::try_from(std::process::id()).unwrap())
            .unwrap()
            .unwrap();
        sys::send_with_fds(&peer, b"ok\n", &[pidfd.as_fd()]).unwrap();
        let (r, _w) = nix::unistd::pipe().unwrap();
        sys::send_with_fds(&peer, b"pipe\n", &[r.as_fd()]).unwrap();
        let fds: Vec<_> = (0..MAX_FDS + 1).map(|_| pidfd.as_fd()).collect();
        sys::send_with_fds(&peer, b"many\n", &fds).unwrap();
        assert!(conn.read_once(&closer));
        let first = conn.next_line().unwrap();
        assert_eq!((first.framing, first.fds.len()), (Framing::Ok, 1));
        assert!(conn.read_once(&closer));
        let second = conn.next_line().unwrap();
        assert_eq!((second.framing, second.fds.len()), (Framing::NotPidfd, 0));
        assert!(conn.read_once(&closer));
        let third = conn.next_line().unwrap();
        assert_eq!((third.framing, third.fds.len()), (Framing::TooManyFds, 0));
    }
}
