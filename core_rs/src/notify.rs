//! A wake-up channel an event loop can watch as a file descriptor.
//!
//! One [`Notifier`] serves every parked subscription of one event loop: a
//! wake records the subscription's token and, if the loop has not been
//! signalled since it last looked, writes one byte to a socket pair. The loop
//! watches the other end (asyncio `add_reader`), drains it and takes the
//! tokens. Thousands of waiting subscribers cost one descriptor and no thread.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use crate::bus::Wake;

pub struct Notifier {
    tokens: Mutex<Vec<u64>>,
    signalled: AtomicBool,
    writer: UnixStream,
    reader: UnixStream,
}

impl Notifier {
    pub fn new() -> std::io::Result<Notifier> {
        let (writer, reader) = UnixStream::pair()?;
        writer.set_nonblocking(true)?;
        reader.set_nonblocking(true)?;
        Ok(Notifier {
            tokens: Mutex::new(Vec::new()),
            signalled: AtomicBool::new(false),
            writer,
            reader,
        })
    }

    /// The descriptor that becomes readable when tokens are waiting.
    pub fn fd(&self) -> RawFd {
        self.reader.as_raw_fd()
    }

    /// Drains the descriptor and returns the tokens woken since last time.
    pub fn take(&self) -> Vec<u64> {
        // Drain, then clear the flag, then take the tokens: a wake before the
        // clear finds the flag set but its token is taken below; a wake after
        // it writes a fresh byte. No token can be left without a byte.
        let mut buf = [0u8; 256];
        loop {
            match (&self.reader).read(&mut buf) {
                Ok(n) if n == buf.len() => continue,
                Ok(_) => break,
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break, // WouldBlock: drained.
            }
        }
        self.signalled.store(false, Ordering::SeqCst);
        std::mem::take(&mut *self.tokens.lock())
    }
}

impl Wake for Notifier {
    fn wake(&self, token: u64) {
        self.tokens.lock().push(token);
        if !self.signalled.swap(true, Ordering::SeqCst) {
            // A full socket buffer already means "readable"; nothing to add.
            let _ = (&self.writer).write(&[1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{Bus, Poll};
    use std::sync::Arc;

    fn readable(fd: RawFd) -> bool {
        let mut buf = [0u8; 1];
        // Peek through a duplicate view of the descriptor.
        let n = unsafe { libc_recv_peek(fd, &mut buf) };
        n > 0
    }

    unsafe fn libc_recv_peek(fd: RawFd, buf: &mut [u8]) -> isize {
        extern "C" {
            fn recv(fd: i32, buf: *mut u8, len: usize, flags: i32) -> isize;
        }
        const MSG_PEEK: i32 = 2;
        const MSG_DONTWAIT: i32 = 0x40;
        recv(fd, buf.as_mut_ptr(), buf.len(), MSG_PEEK | MSG_DONTWAIT)
    }

    #[test]
    fn many_wakes_signal_once_and_keep_every_token() {
        let notifier = Arc::new(Notifier::new().unwrap());
        assert!(!readable(notifier.fd()));
        for token in 0..5000 {
            notifier.wake(token);
        }
        assert!(readable(notifier.fd()));
        assert_eq!(notifier.take(), (0..5000).collect::<Vec<_>>());
        assert!(!readable(notifier.fd()));
        assert!(notifier.take().is_empty());
    }

    #[test]
    fn a_publish_wakes_a_parked_subscription_through_the_descriptor() {
        let bus = Bus::new(4).unwrap();
        let notifier = Arc::new(Notifier::new().unwrap());
        let waker: Arc<dyn Wake> = notifier.clone();
        let mut sub = bus.subscribe("t", 0);
        assert_eq!(sub.poll_or_park(8, |_, _: &u8| {}, &waker, 7), Poll::Empty);
        assert!(!readable(notifier.fd()));
        bus.publish("t", 1u8);
        assert!(readable(notifier.fd()));
        assert_eq!(notifier.take(), vec![7]);
    }
}
