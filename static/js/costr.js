// Copy buttons: <button data-copy="#element-id">Copy</button> copies that element's text.
document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const source = document.querySelector(button.dataset.copy);
  if (!source) return;
  const label = button.textContent;
  try {
    await navigator.clipboard.writeText(source.textContent.trim());
    button.textContent = "Copied";
  } catch (error) {
    const range = document.createRange();
    range.selectNodeContents(source);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    button.textContent = "Press Ctrl+C";
  }
  setTimeout(() => { button.textContent = label; }, 1800);
});

// The phone menu: the Menu button folds and unfolds the header's links (CSS shows the button
// only on narrow screens, and only when this script runs; without it the links stay shown).
const menuButton = document.querySelector(".menu-button");
const siteMenu = document.getElementById("site-menu");
function setMenu(open) {
  if (!menuButton || !siteMenu) return;
  siteMenu.classList.toggle("open", open);
  menuButton.setAttribute("aria-expanded", String(open));
  menuButton.textContent = open ? "Close" : "Menu";
}
if (menuButton && siteMenu) {
  menuButton.hidden = false;
  menuButton.addEventListener("click", () => setMenu(!siteMenu.classList.contains("open")));
}

// Drop-down menus are <details class="dropdown">: one open at a time, closed by Escape (focus
// back on its summary) or a click elsewhere.
const dropdowns = () => document.querySelectorAll("details.dropdown[open]");
document.addEventListener("toggle", (event) => {
  const opened = event.target;
  if (!(opened instanceof HTMLDetailsElement) || !opened.classList.contains("dropdown") || !opened.open) return;
  for (const other of dropdowns()) { if (other !== opened) other.open = false; }
}, true);
document.addEventListener("click", (event) => {
  for (const open of dropdowns()) { if (!open.contains(event.target)) open.open = false; }
});
document.addEventListener("keydown", (event) => {
  if (event.key !== "Escape") return;
  const open = [...dropdowns()];
  if (open.length) {
    for (const item of open) item.open = false;
    open[0].querySelector("summary").focus();
  } else if (siteMenu && siteMenu.classList.contains("open")) {
    setMenu(false);
    menuButton.focus();
  }
});
