from django import forms


class SignInForm(forms.Form):
    email = forms.EmailField(
        label="Email address",
        widget=forms.EmailInput(attrs={"autocomplete": "email", "autofocus": True, "required": True}),
    )
    next = forms.CharField(required=False, widget=forms.HiddenInput)


class SignInCodeForm(forms.Form):
    code = forms.CharField(
        label="6-digit code",
        max_length=12,  # room for a pasted "123 456"
        widget=forms.TextInput(
            attrs={
                "class": "code-input",
                # Set here, so Django links none of its own: the help, and the errors when there are.
                "aria-describedby": "code-help code-error code-form-error",
                "autocomplete": "one-time-code",
                "inputmode": "numeric",
                "pattern": r"[0-9 ]*",
                "autofocus": True,
                "required": True,
            }
        ),
    )
