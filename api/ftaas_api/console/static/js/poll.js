// Repeating refreshes: one at a time (a slow answer never piles up requests), paused while
// the tab is hidden, and stopped for good when the page is left.

/** Run ``refresh`` now and then every ``ms`` while it returns true; returns a stop function. */
export function poll(refresh, ms) {
  let timer = null;
  let stopped = false;
  async function tick() {
    timer = null;
    if (stopped) return;
    if (document.hidden) {
      document.addEventListener("visibilitychange", tick, { once: true });
      return;
    }
    let again = true;
    try {
      again = await refresh();
    } catch {
      // The page shows its own error; keep trying, as a restarting server comes back.
    }
    if (again && !stopped) timer = setTimeout(tick, ms);
  }
  tick();
  return () => {
    stopped = true;
    if (timer) clearTimeout(timer);
    document.removeEventListener("visibilitychange", tick);
  };
}
