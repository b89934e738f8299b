// The console's shell: hash routes (#/jobs, #/jobs/ID, #/files, #/files/ID, #/new), the
// sign-in gate, and the navigation. Each page renders into <main> and returns a function that
// stops whatever it left running (its polling) when the page is left.

import { auth, whenUnauthorized } from "./api.js";
import * as file from "./pages/file.js";
import * as files from "./pages/files.js";
import * as job from "./pages/job.js";
import * as jobs from "./pages/jobs.js";
import * as create from "./pages/create.js";
import * as signin from "./pages/signin.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
let leave = null;
let refusal = null;

function location() {
  const [path, query = ""] = window.location.hash.replace(/^#\/?/, "").split("?");
  return { parts: path.split("/").filter(Boolean).map(decodeURIComponent), query: new URLSearchParams(query) };
}

function pageFor(parts) {
  const [section, id] = parts;
  if (section === "jobs" && id) return job;
  if (section === "files" && id) return file;
  if (section === "files") return files;
  if (section === "new") return create;
  return jobs;
}

function route() {
  if (leave) leave();
  leave = null;
  if (!auth.key) {
    nav.hidden = true;
    leave = signin.render(main, { reason: refusal, done: signedIn });
    return;
  }
  nav.hidden = false;
  const where = location();
  const section = ["jobs", "files", "new"].includes(where.parts[0]) ? where.parts[0] : "jobs";
  for (const link of nav.querySelectorAll("a")) {
    if (link.getAttribute("href") === `#/${section}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  main.replaceChildren();
  leave = pageFor(where.parts).render(main, where) || null;
}

function signedIn() {
  refusal = null;
  route();
  main.focus();
}

whenUnauthorized(() => {
  auth.signOut();
  refusal = "The server refused the key (revoked, or mistyped). Sign in with a valid key.";
  route();
});

document.getElementById("sign-out").addEventListener("click", () => {
  auth.signOut();
  refusal = null;
  window.location.hash = "#/jobs";
  route();
});

window.addEventListener("hashchange", () => {
  route();
  main.focus({ preventScroll: true });
});
route();
