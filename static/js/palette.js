// Colours of the page kinds and of the flashes, keyed by name. One place, so the canvas,
// the legend and the tests agree. The kinds themselves (numbers, names, labels, meanings)
// come with each snapshot (`kinds`, `kind_table`: sim/snapshot.py PAGE_KINDS).

export const KIND_COLOURS = {
  none: [30, 35, 43],        // not present: almost the background
  anon: [92, 104, 120],      // private anonymous page
  volatile: [230, 168, 23],  // rmap_item, checksum changing
  unstable: [56, 139, 253],  // tracked in the unstable tree
  ksm: [46, 194, 96],        // maps a KSM page (shaded by sharing count)
  zero: [225, 228, 232],     // zero page from a read fault (clean PTE)
  ksm_zero: [255, 32, 200],  // zero page placed by KSM, PTE marked dirty: the star
  skipped: [168, 96, 50],    // smart scan skipped it
  stale: [150, 60, 60],      // unmerged, rmap_item still on a stable node until ksmd's next pass
};

// The overview of a large session: a bucket shows its pages by kind in four quarters, and a
// kind present in it at all gets a quarter, in this order (static/js/overview.js): the
// minorities a talk points at first, so that they are never hidden by the majority.
export const OV_PRIORITY = ["ksm_zero", "stale", "zero", "ksm", "unstable", "volatile", "skipped", "anon", "none"];

// event kinds (sim/changes.py EVENT_PATHS) -> flash class
export const FLASH_OF_EVENT = {
  merge: "merge", merge_new: "merge", ksm_append: "merge",
  zero_merge: "zero_merge",
  unshare: "unshare", unshare_zero: "unshare", unmerge_all: "unshare",
  cow: "cow", cow_zero: "cow",
  thp_zero: "thp_zero",
};

export const FLASH_COLOURS = {
  merge: [255, 255, 255],
  zero_merge: [255, 170, 240],
  unshare: [255, 64, 64],
  cow: [255, 150, 20],
  thp_zero: [120, 220, 255],
};

export const FLASH_LABELS = {
  merge: "merge",
  zero_merge: "zero-merge",
  unshare: "unshare",
  cow: "copy-on-write",
  thp_zero: "THP split to zero page",
};

export const CURSOR_COLOUR = "#ffd400";

export function rgb(c) {
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

// A KSM cell's shade: brighter for few sharers, darker green-teal as sharing grows.
export function ksmShade(sharers) {
  const t = Math.min(1, Math.log2(Math.max(2, sharers)) / 8); // 2 -> 0.125, 256 -> 1
  return [Math.round(70 - 50 * t), Math.round(215 - 80 * t), Math.round(110 + 40 * t)];
}
