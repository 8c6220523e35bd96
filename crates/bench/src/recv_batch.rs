//! Many datagrams per system call for the load generators' receivers (`recvmmsg(2)`), so that
//! a benchmark's own receiving costs the machine as little as possible.
#![allow(unsafe_code)]

/// Datagrams per `recvmmsg` call.
pub const BATCH: usize = 64;

/// Buffers for `recvmmsg(2)`. The raw pointers in `iovs` and `msgs` point into `bufs` and
/// `iovs`, whose contents never move.
pub struct RecvBatch {
    bufs: Vec<[u8; 2048]>,
    iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

impl RecvBatch {
    pub fn new() -> RecvBatch {
        let mut b = RecvBatch { bufs: vec![[0u8; 2048]; BATCH], iovs: Vec::with_capacity(BATCH), msgs: Vec::new() };
        for buf in &mut b.bufs {
            b.iovs.push(libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() });
        }
        for iov in &mut b.iovs {
            // SAFETY: mmsghdr is plain data; all-zero is a valid value (no name, no control data).
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            b.msgs.push(m);
        }
        b
    }

    /// Datagrams waiting on `fd` (non-blocking), up to [`BATCH`]; 0 on none or an error.
    pub fn recv(&mut self, fd: libc::c_int) -> usize {
        // SAFETY: `msgs` holds BATCH headers whose iovecs point at BATCH live buffers.
        let n = unsafe {
            libc::recvmmsg(fd, self.msgs.as_mut_ptr(), BATCH as libc::c_uint, libc::MSG_DONTWAIT, std::ptr::null_mut())
        };
        n.max(0) as usize
    }

    pub fn datagram(&self, j: usize) -> &[u8] {
        &self.bufs[j][..(self.msgs[j].msg_len as usize).min(2048)]
    }
}
