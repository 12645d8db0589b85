//! A client connection's byte stream after the upgrade: plain TCP, or TLS
//! (rustls) over TCP, behind one non-blocking interface the session drives.
//!
//! Plain TCP is the hot path and stays a direct `writev`. With TLS every
//! socket encrypts its own copy, so a publication is still encoded once but
//! sealed once per subscriber; rustls's send buffer is bounded
//! ([`TLS_BUFFER`]) so a slow reader's backlog stays in the session's
//! outbox, where the slow-consumer policies see it.
//!
//! Knows nothing of WebSocket or herald's protocol.

pub mod tls;

use std::cell::RefCell;
use std::io::{self, IoSlice, Read, Write};
use std::task::{Context, Poll};

use rustls::ServerConnection;
use tokio::net::TcpStream;

/// Plaintext rustls may hold for one connection before a write returns
/// short: like the kernel's send buffer, it is on top of the outbox.
pub const TLS_BUFFER: usize = 64 * 1024;

pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

pub struct TlsStream {
    tcp: TcpStream,
    conn: RefCell<ServerConnection>,
}

/// `io::Read`/`io::Write` over a non-blocking tokio socket, for rustls.
struct Sock<'a>(&'a TcpStream);

impl Read for Sock<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for Sock<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Stream {
    /// A TLS connection whose handshake is complete.
    pub fn tls(tcp: TcpStream, mut conn: ServerConnection) -> Stream {
        conn.set_buffer_limit(Some(TLS_BUFFER));
        Stream::Tls(Box::new(TlsStream {
            tcp,
            conn: RefCell::new(conn),
        }))
    }

    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => &t.tcp,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// Writes what it can of `iov` without blocking: the bytes taken (by the
    /// kernel, or by rustls to seal). `WouldBlock` when nothing was taken.
    pub fn try_write_vectored(&self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.try_write_vectored(iov),
            Stream::Tls(t) => {
                let mut c = t.conn.borrow_mut();
                // What rustls holds goes out first, making room.
                flush(&mut c, &t.tcp)?;
                let n = c.writer().write_vectored(iov)?;
                flush(&mut c, &t.tcp)?;
                let total: usize = iov.iter().map(|s| s.len()).sum();
                if n == 0 && total > 0 {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            }
        }
    }

    /// Sealed bytes still waiting for the socket (TLS only): the session
    /// must wait for writability even with an empty outbox.
    pub fn has_pending(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(t) => t.conn.borrow().wants_write(),
        }
    }

    /// Pushes sealed bytes to the socket while it takes them.
    pub fn flush_pending(&self) -> io::Result<()> {
        match self {
            Stream::Plain(_) => Ok(()),
            Stream::Tls(t) => flush(&mut t.conn.borrow_mut(), &t.tcp),
        }
    }

    /// Reads plaintext into `buf` without blocking. `Ok(0)` is the end of
    /// the stream (EOF, or TLS close_notify); `WouldBlock` means nothing
    /// yet.
    pub fn try_read_buf(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.try_read_buf(buf),
            Stream::Tls(t) => {
                let mut c = t.conn.borrow_mut();
                if let Some(n) = read_plain(&mut c, buf)? {
                    return Ok(n);
                }
                if c.read_tls(&mut Sock(&t.tcp))? == 0 {
                    return Ok(0);
                }
                if let Err(e) = c.process_new_packets() {
                    // Send the alert rustls queued, then give up.
                    let _ = flush(&mut c, &t.tcp);
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
                let got = read_plain(&mut c, buf)?;
                // Answers to the peer (key updates, alerts) go out now.
                flush(&mut c, &t.tcp)?;
                match got {
                    Some(n) => Ok(n),
                    // A partial record: the socket may hold more, and its
                    // readiness was not cleared, so the session comes back.
                    None => Err(io::ErrorKind::WouldBlock.into()),
                }
            }
        }
    }

    /// Plaintext rustls decrypted during the handshake that nobody read yet
    /// (a client's first frames right behind its upgrade request).
    pub fn take_buffered(&self, into: &mut Vec<u8>) {
        if let Stream::Tls(t) = self {
            let _ = read_plain(&mut t.conn.borrow_mut(), into);
        }
    }

    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp().poll_read_ready(cx)
    }

    pub fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp().poll_write_ready(cx)
    }

    /// Ends our direction: TLS close_notify first, then a TCP half-close.
    pub fn shutdown_write(&self) {
        if let Stream::Tls(t) = self {
            let mut c = t.conn.borrow_mut();
            c.send_close_notify();
            let _ = flush(&mut c, &t.tcp);
        }
        let _ = socket2::SockRef::from(self.tcp()).shutdown(std::net::Shutdown::Write);
    }
}

/// Writes sealed records until rustls has none or the socket is full.
fn flush(c: &mut ServerConnection, tcp: &TcpStream) -> io::Result<()> {
    while c.wants_write() {
        match c.write_tls(&mut Sock(tcp)) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Moves every decrypted byte rustls holds into `buf`. `None` when it holds
/// none (and the peer has not closed); `Some(0)` after close_notify.
fn read_plain(c: &mut ServerConnection, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
    let mut total = 0;
    let mut chunk = [0u8; 4096];
    loop {
        match c.reader().read(&mut chunk) {
            Ok(0) => return Ok(Some(total)),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                total += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Ok((total > 0).then_some(total));
            }
            Err(e) => return Err(e),
        }
    }
}
