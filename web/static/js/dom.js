// DOM building and patching. Every string becomes a text node or an attribute
// value; nothing here ever parses HTML, so untrusted text cannot become markup.

const SVG_NS = "http://www.w3.org/2000/svg";

function build(el, props, children) {
  for (const [name, value] of Object.entries(props || {})) {
    if (value == null || value === false) continue;
    if (name === "style") {
      // CSSOM, not the style attribute: the page's CSP forbids inline style attributes.
      for (const [prop, v] of Object.entries(value)) if (v != null) el.style.setProperty(prop, String(v));
    } else if (/^on/i.test(name)) {
      throw new Error("event handlers are delegated, never set as attributes");
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child == null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

/** h("div", {class: "x", "data-key": id}, "text", child, [children]) */
export function h(tag, props, ...children) {
  return build(document.createElement(tag), props, children);
}

export function svg(tag, props, ...children) {
  return build(document.createElementNS(SVG_NS, tag), props, children);
}

/**
 * Make `from` look like `to`, reusing existing nodes so that focus, hover,
 * running CSS animations and transitions survive a re-render. Children with a
 * `data-key` attribute are matched by key, the others by position and tag.
 */
export function morph(from, to) {
  if (from.nodeType !== Node.ELEMENT_NODE) {
    if (from.nodeValue !== to.nodeValue) from.nodeValue = to.nodeValue;
    return;
  }
  syncAttributes(from, to);
  syncChildren(from, to);
}

function syncAttributes(from, to) {
  for (const { name } of Array.from(from.attributes)) {
    if (!to.hasAttribute(name)) from.removeAttribute(name);
  }
  for (const { name, value } of Array.from(to.attributes)) {
    if (name === "style") {
      if (from.style.cssText !== to.style.cssText) from.style.cssText = to.style.cssText;
    } else if (from.getAttribute(name) !== value) {
      from.setAttribute(name, value);
    }
  }
}

const keyOf = (node) => (node.nodeType === Node.ELEMENT_NODE ? node.getAttribute("data-key") : null);

function syncChildren(from, to) {
  const keyed = new Map();
  const loose = [];
  for (const child of from.childNodes) {
    const key = keyOf(child);
    if (key !== null) keyed.set(key, child);
    else loose.push(child);
  }
  let next = 0;
  let ref = from.firstChild; // everything before `ref` is already in its final place
  for (const wanted of Array.from(to.childNodes)) {
    const key = keyOf(wanted);
    let match = null;
    if (key !== null) {
      match = keyed.get(key) || null;
      if (match && match.nodeName !== wanted.nodeName) match = null;
      keyed.delete(key);
    } else if (next < loose.length && loose[next].nodeName === wanted.nodeName) {
      match = loose[next++];
    }
    if (!match) {
      from.insertBefore(wanted, ref);
      continue;
    }
    morph(match, wanted);
    if (match === ref) ref = ref.nextSibling;
    else from.insertBefore(match, ref);
  }
  while (ref) {
    const after = ref.nextSibling;
    from.removeChild(ref);
    ref = after;
  }
}
