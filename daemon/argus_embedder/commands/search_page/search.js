// The search page: reads the form, asks /search, renders the JSON as thumbnails.
// Every string from the server goes in through textContent or an attribute, never as HTML.
"use strict";

(() => {
  const THUMB_WIDTH = 480; // the cards are 240 CSS px wide: sharp on a 2x screen
  const LIMITS = { frame: 24, video: 10 }; // frames, or videos with their moments

  const form = document.getElementById("search");
  const statusLine = document.getElementById("status");
  const results = document.getElementById("results");
  let latest = 0; // a slow answer to an older query must not replace a newer one

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function clock(ms) {
    if (ms === null || ms === undefined) return "--:--";
    const seconds = Math.floor(ms / 1000);
    const pad = (n) => String(n).padStart(2, "0");
    return `${pad(Math.floor(seconds / 60))}:${pad(seconds % 60)}`;
  }

  function score(value) {
    return element("span", "score", `score ${Number(value).toFixed(3)}`);
  }

  // A thumbnail that links to the full frame.
  function card(frameId, label, lines) {
    const item = element("article", "card");
    const id = encodeURIComponent(String(frameId));
    const link = element("a");
    link.href = `/frames/${id}`;
    link.target = "_blank";
    link.rel = "noopener";
    const image = element("img");
    image.src = `/frames/${id}?width=${THUMB_WIDTH}`;
    image.alt = label;
    image.decoding = "async";
    link.append(image);
    item.append(link);
    for (const line of lines) item.append(line);
    return item;
  }

  function paragraph(...parts) {
    const line = element("p");
    parts.forEach((part, index) => {
      if (index > 0) line.append(" ");
      line.append(part);
    });
    return line;
  }

  function renderFrames(hits) {
    const grid = element("div", "grid");
    for (const hit of hits) {
      grid.append(
        card(hit.frame_id, `${hit.video_id} frame ${hit.frame_index}`, [
          paragraph(element("span", "video-id", hit.video_id)),
          paragraph(
            element("span", "range", clock(hit.timestamp_ms)),
            element("span", "frame-index", `frame ${hit.frame_index}`),
            score(hit.score),
          ),
        ]),
      );
      grid.lastChild.classList.add("frame");
    }
    return grid;
  }

  function renderVideos(videos) {
    const list = element("div");
    for (const video of videos) {
      const section = element("section", "video");
      const title = element("h2");
      title.append(element("span", "video-id", video.video_id));
      if (video.project_id !== null) {
        title.append(element("span", "project", `project ${video.project_id}`));
      }
      title.append(score(video.score));
      section.append(title);
      const grid = element("div", "grid");
      for (const moment of video.moments) {
        const range = `${clock(moment.start_ms)}\u2013${clock(moment.end_ms)}`;
        const item = card(moment.frame_id, `${video.video_id} ${range}`, [
          paragraph(
            element("span", "range", range),
            element("span", "frame-index", `frame ${moment.frame_index}`),
            score(moment.score),
          ),
        ]);
        item.classList.add("moment");
        grid.append(item);
      }
      section.append(grid);
      list.append(section);
    }
    return list;
  }

  function say(text, isError) {
    statusLine.textContent = text;
    statusLine.classList.toggle("error", Boolean(isError));
  }

  function fromForm() {
    const data = new FormData(form);
    const params = new URLSearchParams();
    params.set("q", String(data.get("q") || "").trim());
    const project = String(data.get("project") || "").trim();
    if (project) params.set("project", project);
    params.set("by", data.get("by") === "frame" ? "frame" : "video");
    return params;
  }

  function toForm(params) {
    form.elements.q.value = params.get("q") || "";
    form.elements.project.value = params.get("project") || "";
    const by = params.get("by") === "frame" ? "frame" : "video";
    for (const radio of form.elements.by) radio.checked = radio.value === by;
  }

  async function search(params) {
    const query = ++latest;
    const by = params.get("by");
    const request = new URLSearchParams(params);
    request.set("limit", String(LIMITS[by]));
    say("searching\u2026");
    let body;
    let ok;
    try {
      const response = await fetch(`/search?${request}`, { headers: { Accept: "application/json" } });
      ok = response.ok;
      body = await response.json();
    } catch (error) {
      ok = false;
      body = { error: "the search service did not answer" };
    }
    if (query !== latest) return;
    results.replaceChildren();
    if (!ok) {
      say(body && body.error ? String(body.error) : "search failed", true);
      return;
    }
    if (by === "video") {
      say(body.length ? `${body.length} video(s), best first` : "no videos found");
      results.append(renderVideos(body));
    } else {
      say(body.length ? `${body.length} frame(s), best first` : "no frames found");
      results.append(renderFrames(body));
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const params = fromForm();
    if (!params.get("q")) return;
    // The address bar keeps the query: a result page can be shared and reloaded.
    history.pushState(null, "", `?${params}`);
    search(params);
  });

  function fromAddress() {
    const params = new URLSearchParams(location.search);
    toForm(params);
    if (params.get("q")) search(fromForm());
  }

  window.addEventListener("popstate", fromAddress);
  fromAddress();
})();
