// Share panel of the browser client: while a session is live it shows the viewer page URL (for an
// OBS Browser Source) and the WHEP URL, starts and stops an RTMP/SRT push and a recording, and
// lists every output of the session with its state (polled from GET /sessions/{id}/outputs).
// It follows app.js through window.avatarClient (the session id) and reads the access token app.js
// keeps for the tab.
(() => {
  'use strict';

  const POLL_MS = 1500;
  const $ = (id) => document.getElementById(id);
  const ui = {
    panel: $('share'), viewUrl: $('share-view-url'), viewAudio: $('share-view-audio'), viewFollow: $('share-view-follow'),
    whepUrl: $('share-whep-url'),
    tokenHint: $('share-token-hint'), pushUrl: $('share-push-url'), pushStart: $('share-push-start'),
    recordStart: $('share-record-start'), error: $('share-error'), outputs: $('share-outputs'),
  };
  const state = { sessionId: null, outputs: [], timer: null };

  function token() {
    try { return sessionStorage.getItem('liveAvatarToken'); } catch (_) { return null; }
  }

  function withToken(url) {
    const t = token();
    if (!t) return url;
    const u = new URL(url);
    u.searchParams.set('token', t);
    return u.toString();
  }

  async function call(method, path, body) {
    const headers = {};
    const t = token();
    if (t) headers.Authorization = `Bearer ${t}`;
    const init = { method, headers };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    const data = await response.json().catch(() => null);
    if (!response.ok) throw new Error((data && data.error) || `${response.status} ${response.statusText}`);
    return data;
  }

  function showError(message) {
    ui.error.textContent = message || '';
    ui.error.hidden = !message;
  }

  function sessionUrl(suffix, id = state.sessionId) {
    return new URL(`sessions/${encodeURIComponent(id)}/${suffix}`, window.location.href).toString();
  }

  function renderUrls() {
    const view = new URL(sessionUrl('view', ui.viewFollow.checked ? 'latest' : state.sessionId));
    if (!ui.viewAudio.checked) view.searchParams.set('audio', '0');
    ui.viewUrl.value = withToken(view.toString());
    ui.whepUrl.value = sessionUrl('whep');
    ui.tokenHint.hidden = !token();
  }

  function describe(output) {
    if (output.type === 'whep') return 'WHEP viewer';
    if (output.type === 'record') return `Recording ${output.duration_s ?? 0} s`;
    if (output.type === 'virtual_camera') return `Virtual camera ${output.device || ''}`;
    return `${output.type.toUpperCase()} ${output.url || ''}`;
  }

  function renderOutputs() {
    ui.outputs.replaceChildren(...state.outputs.map((output) => {
      const item = document.createElement('li');
      item.dataset.outputId = output.output_id;
      item.dataset.type = output.type;
      const name = document.createElement('span');
      name.textContent = describe(output);
      const badge = document.createElement('span');
      badge.className = 'output-state';
      badge.dataset.state = output.state;
      badge.textContent = output.state;
      item.append(name, badge);
      if (output.download) {
        const link = document.createElement('a');
        link.href = withToken(new URL(output.download.replace(/^\//, ''), window.location.href).toString());
        link.textContent = 'Download';
        link.rel = 'noreferrer';
        item.append(link);
      }
      if (!['stopped', 'failed', 'closed'].includes(output.state)) {
        const stop = document.createElement('button');
        stop.type = 'button';
        stop.textContent = 'Stop';
        stop.className = 'output-stop';
        stop.addEventListener('click', () => stopOutput(output.output_id));
        item.append(stop);
      }
      if (output.error) {
        const error = document.createElement('span');
        error.className = 'output-error';
        error.textContent = output.error;
        item.append(error);
      }
      return item;
    }));
    const pushing = state.outputs.some((o) => ['rtmp', 'rtmps', 'srt'].includes(o.type) && !['stopped', 'failed'].includes(o.state));
    const recording = state.outputs.some((o) => o.type === 'record' && !['stopped', 'failed'].includes(o.state));
    ui.pushStart.disabled = pushing;
    ui.recordStart.disabled = recording;
  }

  async function refresh() {
    if (!state.sessionId) return;
    try {
      const data = await call('GET', `sessions/${encodeURIComponent(state.sessionId)}/outputs`);
      state.outputs = data.outputs;
      renderOutputs();
    } catch (_) { /* the session may just have ended; app.js reports that */ }
  }

  async function startOutput(spec) {
    showError('');
    try {
      await call('POST', `sessions/${encodeURIComponent(state.sessionId)}/outputs`, spec);
    } catch (err) {
      showError(err.message);
    }
    refresh();
  }

  async function stopOutput(outputId) {
    try {
      await call('DELETE', `sessions/${encodeURIComponent(state.sessionId)}/outputs/${encodeURIComponent(outputId)}`);
    } catch (err) {
      showError(err.message);
    }
    // a stopped push or recording leaves the listing; keep its final state visible
    refresh();
  }

  function follow() {
    const id = window.avatarClient ? window.avatarClient.sessionId : null;
    if (id === state.sessionId) return;
    state.sessionId = id;
    state.outputs = [];
    clearInterval(state.timer);
    showError('');
    ui.panel.hidden = !id;
    if (!id) return;
    renderUrls();
    renderOutputs();
    refresh();
    state.timer = setInterval(refresh, POLL_MS);
  }

  ui.viewAudio.addEventListener('change', renderUrls);
  ui.viewFollow.addEventListener('change', renderUrls);
  ui.pushStart.addEventListener('click', () => {
    const url = ui.pushUrl.value.trim();
    if (!url) { showError('Enter the ingest URL of your streaming platform (rtmp://… or srt://…).'); return; }
    startOutput({ type: url.toLowerCase().startsWith('srt:') ? 'srt' : 'rtmp', url });
  });
  ui.recordStart.addEventListener('click', () => startOutput({ type: 'record' }));
  document.querySelectorAll('#share button.copy').forEach((button) => {
    button.addEventListener('click', () => {
      const field = $(button.dataset.copy);
      field.select();
      if (navigator.clipboard) navigator.clipboard.writeText(field.value).catch(() => document.execCommand('copy'));
      else document.execCommand('copy');
    });
  });
  setInterval(follow, 300);
})();
