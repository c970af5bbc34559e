//! Values boxed where they are built. A request's handler future is several kilobytes (every
//! state it can be in, nested); `Box::pin(future)` builds it on the stack and then copies all of
//! it into the box, once per request. [`pinned_in_place`] allocates the box first and builds
//! the value in it: the compiler writes only the fields the value starts with, straight into
//! the heap.

use std::pin::Pin;

/// `make()` built directly in a new box (the allocation comes first, so the value needs no
/// stack copy). Pinned, as a future to poll in place.
#[inline(always)]
pub fn pinned_in_place<T>(make: impl FnOnce() -> T) -> Pin<Box<T>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_future_built_in_its_box_keeps_its_captures_and_state_across_polls() {
        let text = String::from("in place");
        let future = pinned_in_place(|| async move {
            // Kilobytes held across an await, as a handler's state is.
            let scratch = [7_u8; 4096];
            tokio::task::yield_now().await;
            (
                text,
                scratch.iter().map(|&byte| usize::from(byte)).sum::<usize>(),
            )
        });
        assert!(std::mem::size_of_val(&*future) > 4096);
        assert_eq!(future.await, ("in place".to_owned(), 7 * 4096));
    }
}
