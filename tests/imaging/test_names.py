import pytest

from imaging.templatetags.dicom_names import person_name


@pytest.mark.parametrize(("raw", "shown"), [
    ("Doe^Kenji^H", "DOE, Kenji H"),
    ("Müller^Anna", "MÜLLER, Anna"),
    ("Moreau^Luc^^Dr.", "MOREAU, Dr. Luc"),
    ("Smith^John^^^Jr", "SMITH, John Jr"),
    ("Anonymous", "ANONYMOUS"),
    ("", ""),
])
def test_person_names_read_as_people_write_them(raw, shown):
    assert person_name(raw) == shown
