//! The worker crates' one way onto tokio's blocking pool, so that every layer treats a failed
//! blocking task the same way.

/// Runs `f` on tokio's blocking pool (file I/O, hashing, tokenizing a long prompt, span search)
/// and hands back what it returns: the caller's own errors come back in `T`.
///
/// A panic in `f` is a bug, and it goes on unwinding in the caller, as if `f` had run there.
/// The only other way the task can fail is the runtime shutting down before it started, when
/// nobody is left to read an answer; that panics too rather than inventing an error.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
	match tokio::task::spawn_blocking(f).await {
		Ok(value) => value,
		Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
		Err(e) => panic!("a blocking task did not run: {e}"),
	}
}

#[cfg(test)]
mod tests {
	use super::*;

	#[tokio::test]
	async fn hands_back_what_the_closure_returns() {
		let thread = std::thread::current().id();
		let (value, ran_on) = blocking(move || (Err::<u8, String>("no".into()), std::thread::current().id())).await;
		assert_eq!(value, Err("no".to_owned()));
		assert_ne!(ran_on, thread, "the closure ran on the blocking pool, not the caller's thread");
	}

	#[tokio::test]
	async fn a_panic_goes_on_in_the_caller() {
		let caught = tokio::spawn(blocking(|| -> u8 { panic!("bad index") })).await.unwrap_err();
		let payload = caught.into_panic();
		assert_eq!(payload.downcast_ref::<&str>(), Some(&"bad index"));
	}
}
