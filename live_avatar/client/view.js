// Viewer page (GET /sessions/{id}/view): plays one session over WHEP, full window, no controls.
// Made for an OBS Browser Source: it reconnects by itself (backoff up to 5 s) whenever the
// connection fails, the session ends or restarts, or the server cannot be reached, forever.
// ?audio=0: video only. ?token=…: the access token (sent as a Bearer header).
// /sessions/latest/view shows the caller's newest live session and moves on to the next one.
(() => {
  'use strict';

  const params = new URL(window.location.href).searchParams;
  const token = params.get('token');
  const withAudio = params.get('audio') !== '0';
  const RETRY_MIN_MS = 500;
  const RETRY_MAX_MS = 5000;
  const DISCONNECTED_GRACE_MS = 3000; // a 'disconnected' connection often recovers by itself
  const video = document.getElementById('video');
  video.muted = !withAudio;

  const state = { pc: null, location: null, sessionId: null, retryMs: RETRY_MIN_MS, timer: null, connects: 0, lastError: null, framesPresented: 0 };

  function headers(extra) {
    const h = Object.assign({}, extra);
    if (token) h.Authorization = `Bearer ${token}`;
    return h;
  }

  function waitForIceGathering(pc) {
    if (pc.iceGatheringState === 'complete') return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => { clearTimeout(timer); resolve(); };
      const timer = setTimeout(done, 2000); // host candidates are enough on a LAN
      pc.addEventListener('icegatheringstatechange', () => { if (pc.iceGatheringState === 'complete') done(); });
    });
  }

  function release() {
    const { pc, location } = state;
    state.pc = null;
    state.location = null;
    if (pc) pc.close();
    if (location) fetch(location, { method: 'DELETE', headers: headers(), keepalive: true }).catch(() => {});
  }

  function retrySoon(reason) {
    if (state.timer) return;
    state.lastError = reason;
    release();
    const wait = state.retryMs;
    state.retryMs = Math.min(RETRY_MAX_MS, state.retryMs * 2);
    state.timer = setTimeout(() => { state.timer = null; connect(); }, wait);
  }

  async function connect() {
    const pc = new RTCPeerConnection();
    state.pc = pc;
    pc.addTransceiver('video', { direction: 'recvonly' });
    if (withAudio) pc.addTransceiver('audio', { direction: 'recvonly' });
    const stream = new MediaStream();
    pc.addEventListener('track', (event) => {
      stream.addTrack(event.track);
      video.srcObject = stream;
      video.play().catch(() => { video.muted = true; video.play().catch(() => {}); }); // autoplay rules
      event.track.addEventListener('ended', () => { if (state.pc === pc) retrySoon('track ended'); });
    });
    let graceTimer = null;
    pc.addEventListener('connectionstatechange', () => {
      if (state.pc !== pc) return;
      clearTimeout(graceTimer);
      if (pc.connectionState === 'connected') {
        state.retryMs = RETRY_MIN_MS;
        state.connects += 1;
      } else if (pc.connectionState === 'failed' || pc.connectionState === 'closed') {
        retrySoon(`connection ${pc.connectionState}`);
      } else if (pc.connectionState === 'disconnected') {
        graceTimer = setTimeout(() => { if (state.pc === pc && pc.connectionState !== 'connected') retrySoon('connection lost'); }, DISCONNECTED_GRACE_MS);
      }
    });
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await waitForIceGathering(pc);
      const response = await fetch('whep', { method: 'POST', headers: headers({ 'Content-Type': 'application/sdp' }), body: pc.localDescription.sdp });
      if (response.status !== 201) {
        const text = await response.text();
        throw new Error(`WHEP answered ${response.status}: ${text}`);
      }
      if (state.pc !== pc) return;
      state.location = response.headers.get('Location');
      state.sessionId = response.headers.get('X-Session-Id');
      await pc.setRemoteDescription({ type: 'answer', sdp: await response.text() });
    } catch (err) {
      if (state.pc === pc) retrySoon(err.message || String(err));
    }
  }

  function countFrames() {
    if (!video.requestVideoFrameCallback) return;
    const onFrame = () => { state.framesPresented += 1; video.requestVideoFrameCallback(onFrame); };
    video.requestVideoFrameCallback(onFrame);
  }

  window.addEventListener('pagehide', release);
  // read-only view for tests and debugging
  window.avatarViewer = {
    get connectionState() { return state.pc ? state.pc.connectionState : 'none'; },
    get connects() { return state.connects; },
    get sessionId() { return state.sessionId; }, // the session shown (…/sessions/latest/view follows the newest)
    get framesPresented() { return state.framesPresented; },
    get lastError() { return state.lastError; },
    get withAudio() { return withAudio; },
  };
  countFrames();
  connect();
})();
