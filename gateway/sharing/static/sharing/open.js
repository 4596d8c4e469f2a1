// Share link: the token travels in the URL fragment, which browsers never send to a server.
// Read it, drop it from the address bar and history, and post it in the form body.
const form = document.getElementById("share-open");
if (form) {
  const token = decodeURIComponent(location.hash.replace(/^#/, ""));
  history.replaceState(null, "", location.pathname);
  if (/^[A-Za-z0-9_-]{16,2048}$/.test(token)) {
    document.getElementById("share-token").value = token;
    form.submit();
  } else {
    document.getElementById("share-missing").hidden = false;
  }
}
