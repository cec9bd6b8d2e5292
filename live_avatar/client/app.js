// Live Avatar browser client: microphone -> WebRTC -> talking portrait, with a stats overlay.
// Plain JS, no dependencies: the page must work on machines without internet access.
'use strict';

(() => {
  const CONFIG = {
    statsIntervalMs: 1000,
    iceGatherTimeoutMs: 3000,
    connectTimeoutMs: 15000,
    // Loopback / LAN use needs no STUN server; a deployment behind NAT would add one here.
    rtcConfiguration: { iceServers: [] },
  };

  const $ = (id) => document.getElementById(id);
  const ui = {
    state: $('state'),
    error: $('error'), errorText: $('error-text'), errorClose: $('error-close'),
    video: $('video'), audio: $('audio'), placeholder: $('placeholder'), videoBox: $('video-box'),
    form: $('connect-form'), avatarSelect: $('avatar-select'), avatarFile: $('avatar-file'),
    avatarPreview: $('avatar-preview'), prompt: $('prompt'),
    micProcessing: $('mic-processing'), playAudio: $('play-audio'),
    connect: $('connect'), interrupt: $('interrupt'), disconnect: $('disconnect'),
    sessionId: $('session-id'), micLevel: $('mic-level'),
    stat: {
      firstFrame: $('stat-first-frame'), s2l: $('stat-s2l'), fps: $('stat-fps'),
      decoded: $('stat-decoded'), repeatDrop: $('stat-repeat-drop'), jitter: $('stat-jitter'),
      av: $('stat-av'), size: $('stat-size'),
    },
  };

  // Everything about the live session; reset by teardown().
  const session = {
    pc: null, mic: null, id: null, statsTimer: null, meter: null,
    connectStartedAt: 0, firstFrameAt: 0, framesPresented: 0,
    serverStats: null, videoStats: null, prevVideo: null, audioStats: null,
  };

  let lastMicTrack = null; // kept past teardown so tests can check the mic was released

  // ---------------------------------------------------------------- access token

  // A server with access tokens prints its page URL with ?token=…. The page keeps the token for
  // this tab (sessionStorage: it survives a reload, not the tab), takes it out of the address bar
  // (so it is not shared with a screenshot or a copied link), and sends it as a Bearer header.
  const TOKEN_STORAGE_KEY = 'liveAvatarToken';

  function takeAccessToken() {
    const url = new URL(window.location.href);
    const fromUrl = url.searchParams.get('token');
    let stored = null;
    try {
      if (fromUrl) sessionStorage.setItem(TOKEN_STORAGE_KEY, fromUrl);
      stored = sessionStorage.getItem(TOKEN_STORAGE_KEY);
    } catch (_) { /* storage disabled: the token lives as long as the page */ }
    if (fromUrl) {
      url.searchParams.delete('token');
      window.history.replaceState(window.history.state, '', url.pathname + url.search + url.hash);
    }
    return fromUrl || stored;
  }

  const accessToken = takeAccessToken();

  function authorized(headers = {}) {
    if (accessToken) headers.Authorization = `Bearer ${accessToken}`;
    return headers;
  }

  // ---------------------------------------------------------------- HTTP helpers

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // fetch + JSON; a non-2xx answer becomes an ApiError carrying the server's own message.
  async function api(method, path, body) {
    const init = { method, headers: authorized() };
    if (body instanceof FormData) {
      init.body = body;
    } else if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      throw new ApiError(0, `Cannot reach the server (${err.message})`);
    }
    const text = await response.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
    if (!response.ok) {
      const detail = data && (data.error || data.message || data.detail);
      const msg = typeof detail === 'string' ? detail
        : detail ? JSON.stringify(detail) : (text.trim() || response.statusText);
      throw new ApiError(response.status, msg);
    }
    return data;
  }

  function describeError(err) {
    if (err instanceof ApiError) {
      if (err.status === 503) return `Server busy (503): ${err.message}`;
      if (err.status === 401) {
        return `Access token ${accessToken ? 'refused' : 'needed'} (401): ${err.message}. `
          + 'Open the page with the address the server printed (…/?token=…).';
      }
      if (err.status === 0) return err.message;
      return `Request failed (${err.status}): ${err.message}`;
    }
    if (err && err.name === 'NotAllowedError') return 'Microphone access was denied. Allow it in the browser and try again.';
    if (err && err.name === 'NotFoundError') return 'No microphone was found.';
    if (err && err.name === 'NotReadableError') return 'The microphone is in use by another application.';
    return (err && err.message) || String(err);
  }

  function showError(err) {
    ui.errorText.textContent = describeError(err);
    ui.error.hidden = false;
    console.error(err);
  }

  function clearError() {
    ui.error.hidden = true;
    ui.errorText.textContent = '';
  }

  function setState(name, label) {
    ui.state.dataset.state = name;
    ui.state.className = `state state-${name}`;
    ui.state.textContent = label;
  }

  // ---------------------------------------------------------------- avatars

  function addAvatarOption(id, label) {
    let option = [...ui.avatarSelect.options].find((o) => o.value === id);
    if (!option) {
      option = new Option(label || id, id);
      ui.avatarSelect.add(option);
    }
    return option;
  }

  // The list is optional: a server without GET /avatars still offers its default avatar.
  async function loadAvatars() {
    let data;
    try {
      data = await api('GET', 'avatars');
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) showError(err); // say so before Connect fails
      return;
    }
    const items = Array.isArray(data) ? data : (data && data.avatars) || [];
    const chosen = ui.avatarSelect.value; // a choice made while the list loaded is kept if it is listed
    if (items.length) ui.avatarSelect.innerHTML = ''; // the server's list replaces the placeholder
    for (const item of items) {
      if (typeof item === 'string') addAvatarOption(item, item);
      else if (item && (item.avatar_id || item.id)) {
        const id = item.avatar_id || item.id;
        addAvatarOption(id, id === 'default' ? 'Default portrait' : (item.name || id));
      }
    }
    if ([...ui.avatarSelect.options].some((o) => o.value === chosen)) ui.avatarSelect.value = chosen;
  }

  async function uploadAvatar(file) {
    clearError();
    const form = new FormData();
    form.append('image', file, file.name);
    ui.avatarFile.disabled = true;
    try {
      const data = await api('POST', 'avatars', form);
      const option = addAvatarOption(data.avatar_id, `${file.name} (uploaded)`);
      option.selected = true;
      ui.avatarPreview.src = URL.createObjectURL(file);
      ui.avatarPreview.hidden = false;
    } catch (err) {
      showError(err);
      ui.avatarFile.value = '';
    } finally {
      ui.avatarFile.disabled = false;
    }
  }

  // ---------------------------------------------------------------- connection

  function waitForIceGathering(pc) {
    if (pc.iceGatheringState === 'complete') return Promise.resolve();
    // aiortc does not take trickled candidates: send the offer once gathering is done
    // (or after a timeout with the host candidates found so far).
    return new Promise((resolve) => {
      const timer = setTimeout(done, CONFIG.iceGatherTimeoutMs);
      function done() {
        clearTimeout(timer);
        pc.removeEventListener('icegatheringstatechange', check);
        resolve();
      }
      function check() { if (pc.iceGatheringState === 'complete') done(); }
      pc.addEventListener('icegatheringstatechange', check);
    });
  }

  function waitForConnected(pc) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('WebRTC connection timed out')), CONFIG.connectTimeoutMs);
      const check = () => {
        if (pc.connectionState === 'connected') { clearTimeout(timer); resolve(); }
        else if (pc.connectionState === 'failed' || pc.connectionState === 'closed') {
          clearTimeout(timer);
          reject(new Error(`WebRTC connection ${pc.connectionState}`));
        }
      };
      pc.addEventListener('connectionstatechange', check);
      check();
    });
  }

  async function openMicrophone() {
    const processing = ui.micProcessing.checked;
    return navigator.mediaDevices.getUserMedia({
      audio: {
        channelCount: 1,
        echoCancellation: processing,
        noiseSuppression: processing,
        autoGainControl: processing,
      },
      video: false,
    });
  }

  async function connect() {
    clearError();
    setButtons('connecting');
    setState('connecting', 'Connecting…');
    session.connectStartedAt = performance.now();
    let pc = null;
    try {
      session.mic = await openMicrophone();
      lastMicTrack = session.mic.getAudioTracks()[0];
      startMicMeter(session.mic);

      pc = new RTCPeerConnection(CONFIG.rtcConfiguration);
      session.pc = pc;
      pc.addTransceiver(session.mic.getAudioTracks()[0], { direction: 'sendonly' });
      pc.addTransceiver('video', { direction: 'recvonly' });
      pc.addTransceiver('audio', { direction: 'recvonly' });
      pc.addEventListener('track', onTrack);
      pc.addEventListener('connectionstatechange', () => onConnectionState(pc));

      await pc.setLocalDescription(await pc.createOffer());
      await waitForIceGathering(pc);
      const body = { sdp: pc.localDescription.sdp, type: pc.localDescription.type };
      if (ui.avatarSelect.value) body.avatar_id = ui.avatarSelect.value;
      if (ui.prompt.value.trim()) body.prompt = ui.prompt.value.trim();
      const answer = await api('POST', 'offer', body);
      if (session.pc !== pc) { // Disconnect was pressed while the server answered: free its session
        api('DELETE', `sessions/${encodeURIComponent(answer.session_id)}`).catch(() => {});
        return;
      }
      session.id = answer.session_id;
      ui.sessionId.textContent = session.id || '–';
      await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
      await waitForConnected(pc);
      setState('live', 'Live');
      setButtons('live');
      session.statsTimer = setInterval(refreshStats, CONFIG.statsIntervalMs);
    } catch (err) {
      if (pc && session.pc !== pc) return; // the user disconnected meanwhile: nothing went wrong
      showError(err);
      await teardown({ notifyServer: true });
    }
  }

  function onTrack(event) {
    const stream = new MediaStream([event.track]);
    if (event.track.kind === 'video') {
      ui.video.srcObject = stream;
      ui.video.play().catch(() => {});
      watchFrames();
    } else {
      ui.audio.srcObject = stream;
      ui.audio.muted = !ui.playAudio.checked;
      ui.audio.play().catch(() => {});
    }
  }

  function onConnectionState(pc) {
    if (session.pc !== pc || !session.statsTimer) return; // connect() handles the setup phase
    if (pc.connectionState === 'failed') {
      showError(new Error('Connection to the server was lost.'));
      teardown({ notifyServer: true });
    } else if (pc.connectionState === 'disconnected') {
      setState('connecting', 'Reconnecting…'); // often recovers by itself within seconds
    } else if (pc.connectionState === 'connected') {
      setState('live', 'Live');
    }
  }

  // Counts frames that reach the screen; the first one gives the page's own first-frame time.
  function watchFrames() {
    const video = ui.video;
    const onFrame = () => {
      if (!session.pc) return;
      session.framesPresented += 1;
      if (!session.firstFrameAt) {
        session.firstFrameAt = performance.now();
        ui.placeholder.hidden = true;
        // size the stage to the avatar's own aspect ratio (no black bars)
        if (video.videoWidth && video.videoHeight) ui.videoBox.style.setProperty('--aspect', String(video.videoWidth / video.videoHeight));
        renderStats();
      }
      video.requestVideoFrameCallback(onFrame);
    };
    if ('requestVideoFrameCallback' in video) video.requestVideoFrameCallback(onFrame);
    else video.addEventListener('playing', () => { session.firstFrameAt = session.firstFrameAt || performance.now(); ui.placeholder.hidden = true; }, { once: true });
  }

  async function interrupt() {
    if (!session.id) return;
    try {
      await api('POST', `sessions/${encodeURIComponent(session.id)}/interrupt`);
      ui.interrupt.textContent = 'Interrupted';
      setTimeout(() => { ui.interrupt.textContent = 'Interrupt'; }, 800);
    } catch (err) {
      showError(err);
    }
  }

  async function teardown({ notifyServer }) {
    const { pc, mic, id } = session;
    clearInterval(session.statsTimer);
    stopMicMeter();
    Object.assign(session, {
      pc: null, mic: null, id: null, statsTimer: null,
      firstFrameAt: 0, framesPresented: 0, serverStats: null, videoStats: null, prevVideo: null, audioStats: null,
    });
    if (mic) mic.getTracks().forEach((t) => t.stop());
    if (pc) pc.close();
    ui.video.srcObject = null;
    ui.audio.srcObject = null;
    ui.placeholder.hidden = false;
    ui.sessionId.textContent = '–';
    setButtons('idle');
    setState('idle', 'Not connected');
    resetStats();
    if (notifyServer && id) {
      try {
        await api('DELETE', `sessions/${encodeURIComponent(id)}`);
      } catch (err) {
        if (!(err instanceof ApiError && err.status === 404)) showError(err);
      }
    }
  }

  function setButtons(phase) {
    ui.connect.disabled = phase !== 'idle';
    ui.interrupt.disabled = phase !== 'live';
    ui.disconnect.disabled = phase === 'idle';
    ui.avatarSelect.disabled = phase !== 'idle';
    ui.avatarFile.disabled = phase !== 'idle';
    ui.micProcessing.disabled = phase !== 'idle';
    ui.videoBox.classList.toggle('active', phase !== 'idle'); // the overlay shows only then
  }

  // ---------------------------------------------------------------- microphone level meter

  function startMicMeter(stream) {
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) return;
    const ctx = new Ctx();
    const analyser = ctx.createAnalyser();
    analyser.fftSize = 1024;
    ctx.createMediaStreamSource(stream).connect(analyser);
    const buf = new Float32Array(analyser.fftSize);
    const meter = { ctx, raf: 0 };
    const tick = () => {
      analyser.getFloatTimeDomainData(buf);
      let sum = 0;
      for (let i = 0; i < buf.length; i += 1) sum += buf[i] * buf[i];
      const db = 20 * Math.log10(Math.sqrt(sum / buf.length) + 1e-9);
      const pct = Math.max(0, Math.min(100, (db + 60) * (100 / 60))); // -60 dBFS .. 0 dBFS
      ui.micLevel.style.width = `${pct.toFixed(0)}%`;
      meter.raf = requestAnimationFrame(tick);
    };
    tick();
    session.meter = meter;
  }

  function stopMicMeter() {
    const meter = session.meter;
    session.meter = null;
    ui.micLevel.style.width = '0%';
    if (!meter) return;
    cancelAnimationFrame(meter.raf);
    meter.ctx.close().catch(() => {});
  }

  // ---------------------------------------------------------------- stats overlay

  // Returns the first finite number found under any of the given dotted paths.
  function pick(obj, ...paths) {
    for (const path of paths) {
      let v = obj;
      for (const key of path.split('.')) v = v == null ? undefined : v[key];
      if (typeof v === 'number' && Number.isFinite(v)) return v;
    }
    return undefined;
  }

  const fmt = {
    ms: (v) => (v === undefined ? '–' : `${Math.round(v)} ms`),
    num: (v, digits = 0) => (v === undefined ? '–' : v.toFixed(digits)),
  };

  async function refreshStats() {
    const { pc, id } = session;
    if (!pc) return;
    const [server, rtc] = await Promise.allSettled([
      id ? api('GET', `sessions/${encodeURIComponent(id)}/stats`) : Promise.resolve(null),
      pc.getStats(),
    ]);
    if (session.pc !== pc) return;
    if (server.status === 'fulfilled') session.serverStats = server.value;
    const ended = server.status === 'rejected' && server.reason instanceof ApiError && server.reason.status === 404;
    const closed = server.status === 'fulfilled' && server.value && server.value.state === 'closed';
    if (ended || closed) {
      const reason = closed && server.value.close_reason ? `: ${server.value.close_reason}` : '';
      showError(new Error(`The server ended the session${reason}.`));
      teardown({ notifyServer: false });
      return;
    }
    if (rtc.status === 'fulfilled') {
      rtc.value.forEach((report) => {
        if (report.type === 'inbound-rtp' && report.kind === 'video') {
          session.prevVideo = session.videoStats;
          session.videoStats = report;
        } else if (report.type === 'inbound-rtp' && report.kind === 'audio') {
          session.audioStats = report;
        }
      });
    }
    renderStats();
  }

  function renderStats() {
    const s = session.serverStats || {};
    const v = session.videoStats;
    const st = ui.stat;

    const firstFrame = pick(s, 'first_frame_latency_ms', 'latency.first_frame_ms');
    const pageFirst = session.firstFrameAt ? session.firstFrameAt - session.connectStartedAt : undefined;
    st.firstFrame.textContent = firstFrame !== undefined ? fmt.ms(firstFrame)
      : pageFirst !== undefined ? `${fmt.ms(pageFirst)} (page)` : '–';
    st.firstFrame.title = pageFirst !== undefined ? `Connect click to first painted frame: ${fmt.ms(pageFirst)}` : '';

    const s2lLast = pick(s, 'speech_to_lips_latency_ms.last', 'speech_to_lips_ms.last', 'speech_to_lips_latency_ms');
    const s2lP50 = pick(s, 'speech_to_lips_latency_ms.p50', 'speech_to_lips_ms.p50');
    st.s2l.textContent = s2lLast === undefined ? '–'
      : s2lP50 === undefined ? fmt.ms(s2lLast) : `${fmt.ms(s2lLast)} (p50 ${fmt.ms(s2lP50)})`;

    let recvFps = v && typeof v.framesPerSecond === 'number' ? v.framesPerSecond : undefined;
    const prev = session.prevVideo;
    if (recvFps === undefined && v && prev && v.timestamp > prev.timestamp) {
      recvFps = ((v.framesDecoded - prev.framesDecoded) * 1000) / (v.timestamp - prev.timestamp);
    }
    const sentFps = pick(s, 'fps', 'video.fps');
    st.fps.textContent = `${fmt.num(recvFps, 1)} / ${fmt.num(sentFps, 1)}`;

    st.decoded.textContent = v ? `${v.framesDecoded}${v.framesDropped ? ` (${v.framesDropped} dropped here)` : ''}` : '–';

    const repeated = pick(s, 'frames_repeated', 'video.frames_repeated');
    const dropped = pick(s, 'frames_dropped', 'video.frames_dropped');
    st.repeatDrop.textContent = `${fmt.num(repeated)} / ${fmt.num(dropped)}`;

    const jitterMs = v && v.jitterBufferEmittedCount
      ? (v.jitterBufferDelay / v.jitterBufferEmittedCount) * 1000 : undefined;
    st.jitter.textContent = fmt.ms(jitterMs);

    st.av.textContent = fmt.ms(pick(s, 'av_offset_ms', 'av_offset.ms'));

    const w = ui.video.videoWidth;
    const h = ui.video.videoHeight;
    st.size.textContent = w && h ? `${w}×${h}` : '–';
  }

  function resetStats() {
    Object.values(ui.stat).forEach((el) => { el.textContent = '–'; el.title = ''; });
  }

  // ---------------------------------------------------------------- wiring

  ui.form.addEventListener('submit', (event) => {
    event.preventDefault();
    if (!session.pc) connect();
  });
  ui.interrupt.addEventListener('click', interrupt);
  ui.disconnect.addEventListener('click', () => teardown({ notifyServer: true }));
  ui.errorClose.addEventListener('click', clearError);
  ui.avatarFile.addEventListener('change', () => {
    const file = ui.avatarFile.files[0];
    if (file) uploadAvatar(file);
  });
  ui.playAudio.addEventListener('change', () => { ui.audio.muted = !ui.playAudio.checked; });
  window.addEventListener('pagehide', () => {
    // keepalive lets the DELETE outlive the page, so the server frees the session at once.
    if (session.id) fetch(`sessions/${encodeURIComponent(session.id)}`, { method: 'DELETE', keepalive: true, headers: authorized() });
  });

  // Read-only view for tests and debugging (window.avatarClient in the console).
  let avatarsLoaded = null;
  window.avatarClient = {
    get avatarsLoaded() { return avatarsLoaded; }, // resolves once the server's avatar list is shown
    get sessionId() { return session.id; },
    get connected() { return Boolean(session.pc) && session.pc.connectionState === 'connected'; },
    get framesPresented() { return session.framesPresented; },
    get lastMicState() { return lastMicTrack ? lastMicTrack.readyState : null; },
    get pageFirstFrameMs() { return session.firstFrameAt ? session.firstFrameAt - session.connectStartedAt : null; },
    get serverStats() { return session.serverStats; },
    get videoStats() { return session.videoStats; },
    get audioStats() { return session.audioStats; },
    get hasAccessToken() { return Boolean(accessToken); },
  };

  setButtons('idle');
  avatarsLoaded = loadAvatars();
})();
