// cutShort, shared by branches.js and transcript.js: each widget's _esm is this text
// followed by its own module (an anywidget module is one text, with nothing to import).

// The start of `text`, at most `most` UTF-16 units with the ellipsis, cut between two
// user-perceived characters: never inside an emoji, a flag or a letter with its accent
// (a lone half of a surrogate pair is drawn as a replacement character).
function cutShort(text, most) {
  if (text.length <= most) return text;
  let out = "";
  if (typeof Intl !== "undefined" && Intl.Segmenter) {
    for (const { segment } of new Intl.Segmenter().segment(text)) {
      if (out.length + segment.length > most - 1) break;
      out += segment;
    }
  } else {
    out = text.slice(0, most - 1);
    if (/[\ud800-\udbff]$/.test(out)) out = out.slice(0, -1);
  }
  return out + "…";
}
