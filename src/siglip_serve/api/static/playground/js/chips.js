// Editable chips: Enter or a comma adds what was typed, a chip's text button edits it in place,
// its × button removes it, Backspace in the empty input removes the last one.

export function createChips(list, input, initial, noun) {
  let values = [...initial];

  function render() {
    list.replaceChildren(...values.map((value, index) => chip(value, index)));
  }

  function chip(value, index) {
    const item = document.createElement("li");
    item.className = "chip";
    const text = document.createElement("button");
    text.type = "button";
    text.className = "chip-text";
    text.textContent = value;
    text.setAttribute("aria-label", `Edit ${noun}: ${value}`);
    text.addEventListener("click", () => edit(item, index));
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "chip-remove";
    remove.textContent = "×";
    remove.setAttribute("aria-label", `Remove ${noun}: ${value}`);
    remove.addEventListener("click", () => {
      values.splice(index, 1);
      render();
      input.focus();
    });
    item.append(text, remove);
    return item;
  }

  function edit(item, index) {
    const editor = document.createElement("input");
    editor.type = "text";
    editor.value = values[index];
    editor.className = "chip-editor";
    editor.setAttribute("aria-label", `Edit ${noun}`);
    let done = false;
    const finish = (commit) => {
      if (done) return;
      done = true;
      const value = editor.value.trim();
      if (commit && value) values[index] = value;
      if (commit && !value) values.splice(index, 1);
      render();
      input.focus();
    };
    editor.addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        event.preventDefault();
        finish(true);
      } else if (event.key === "Escape") {
        event.preventDefault();
        finish(false);
      }
    });
    editor.addEventListener("blur", () => finish(true));
    item.replaceChildren(editor);
    editor.focus();
    editor.select();
  }

  // Commits what is typed; commas separate several ("cat, dog" adds two).
  function commit() {
    const added = input.value.split(",").map((part) => part.trim()).filter(Boolean);
    input.value = "";
    if (added.length) {
      values.push(...added);
      render();
    }
  }

  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === ",") {
      event.preventDefault();
      commit();
    } else if (event.key === "Backspace" && !input.value && values.length) {
      values.pop();
      render();
    }
  });
  input.addEventListener("input", (event) => {
    if (event.inputType === "insertFromPaste" && input.value.includes(",")) commit();
  });
  render();
  return {
    // What the user means at submit time: the chips plus anything typed but not yet added.
    values() {
      commit();
      return [...values];
    },
    set(next) {
      values = [...next];
      render();
    },
  };
}
