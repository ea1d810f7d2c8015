//! Polling futures by hand: the simulation needs no runtime.

use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// Drive a future whose leaves only ever yield (never wait for anything outside it).
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
    }
}
